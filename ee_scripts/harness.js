/**
 * Runs poi_buffer_means.js under Node with the genuine @google/earthengine client.
 *
 *   node harness.js URL PROJECT POIS.json YEAR RADII [CRS]   (RADII: comma list, e.g. 100,200)
 *
 * POIS.json is [{poi_id, lon, lat}, ...]. The client is initialised against URL (the aether
 * emulator, or any endpoint that speaks the Earth Engine REST API), the script's graph is
 * built with the crs left to the script (it reduces each POI in its own UTM zone, found on
 * the server) or forced to CRS, serialised with ee.Serializer, and evaluated by the client
 * (value:compute).
 * Prints one JSON object: {crs (the zones' crs as the server derived them, a list),
 * expressions: [one per radius],
 * rows: [{poi_id, radius_m, A00..A63}]}. Exit 1 with the message on stderr if anything fails.
 */
'use strict';

const fs = require('fs');
const path = require('path');

global.ee = require('@google/earthengine');
const script = require(path.join(__dirname, 'poi_buffer_means.js'));

function fail(err) {
  process.stderr.write(`harness: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
}

const [url, project, poisFile, yearText, radiiText, forced] = process.argv.slice(2);
if (!radiiText) fail('usage: node harness.js URL PROJECT POIS.json YEAR RADII');
const pois = JSON.parse(fs.readFileSync(poisFile, 'utf8'));
const year = Number(yearText);
const radii = radiiText.split(',').map(Number);

function evaluate(obj) {
  return new Promise((resolve, reject) => {
    obj.evaluate((value, err) => (err ? reject(new Error(err)) : resolve(value)));
  });
}

ee.initialize(url, url, async () => {
  try {
    const fc = ee.FeatureCollection(pois.map(
        (p) => ee.Feature(ee.Geometry.Point([p.lon, p.lat]), {poi_id: p.poi_id})));
    const crs = await evaluate(script.utmCrsOf(fc));
    const tables = script.poiBufferMeans(fc, radii, year, forced || null);
    const expressions = tables.map((t) => JSON.parse(ee.Serializer.toCloudApiJSON(t)));
    const rows = [];
    for (const t of tables) {
      const info = await evaluate(t);
      for (const f of info.features) rows.push(f.properties);
    }
    process.stdout.write(JSON.stringify({crs, expressions, rows}) + '\n');
  } catch (err) {
    fail(err);
  }
}, fail, null, project);
