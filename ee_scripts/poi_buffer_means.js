/**
 * aether — per-POI AlphaEarth buffer means, as an Earth Engine Code Editor script.
 *
 * The same computation as `aether extract --source ee`: the year's mosaic of
 * GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL (filtered by date and by the POIs' bounds), its 64
 * bands A00..A63, a weighted Reducer.mean over a circle of each radius around each POI, at
 * 10 m in the POIs' UTM zone (found on the server from the POIs' centroid). The circles are
 * drawn in that UTM projection with a maxError that keeps their area within 1e-3 of the true
 * circle's (EE's default, 1% of the radius, loses ~1.3%). Earth Engine weights each pixel by
 * the fraction of it inside the circle, as aether's zonal kernel does, so the numbers match
 * poi_embeddings.parquet (aether asks for sums plus a valid-pixel band instead, to also get
 * `weight` and `valid_fraction`; the means are the same). tests/integration/test_ee_script.py runs this
 * file under Node with the @google/earthengine client and checks that against the emulator.
 *
 * Use: paste into https://code.earthengine.google.com, set the parameters below, Run,
 * then start the Export tasks in the Tasks tab (one CSV per radius).
 *
 * The AlphaEarth Foundations Satellite Embedding dataset is produced by Google and Google
 * DeepMind. POIs from OpenStreetMap: © OpenStreetMap contributors (ODbL).
 */

// ---- parameters ------------------------------------------------------------------------
// A table asset of points with a `poi_id` property, e.g. uploaded from aether's pois.parquet.
var POI_TABLE = 'projects/YOUR-PROJECT/assets/pois';
var YEAR = 2024;
var RADII = [100, 200];
// The crs to reduce in. null: the WGS84 UTM zone holding the POIs' centroid, found on the
// server (what aether does); or force one, e.g. 'EPSG:32648'.
var CRS = null;

// ---- the computation (what the tests check) ------------------------------------------
var COLLECTION = 'GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL';
var SCALE = 10;
var BANDS = [];
for (var i = 0; i < 64; i++) {
  BANDS.push('A' + (i < 10 ? '0' : '') + i);
}

/** The EPSG code of the WGS84 UTM zone holding a point (as aether.core.aef.utm_epsg). */
function utmCrs(lon, lat) {
  var zone = Math.floor((lon + 180) / 6) % 60 + 1;
  return 'EPSG:' + ((lat >= 0 ? 32600 : 32700) + zone);
}

/**
 * The UTM crs of the POIs, as a server-side string: the one of the 120 zones (60 bands of
 * 6 degrees, north and south) that holds the POIs' centroid. Computed by Earth Engine, so a
 * table asset of any city needs no edit here.
 */
function utmCrsOf(pois) {
  var zones = [];
  for (var z = 0; z < 60; z++) {
    var west = -180 + 6 * z;
    zones.push(ee.Feature(ee.Geometry.Rectangle([west, 0, west + 6, 84], null, false),
                          {crs: utmCrs(west + 3, 1)}));
    zones.push(ee.Feature(ee.Geometry.Rectangle([west, -80, west + 6, 0], null, false),
                          {crs: utmCrs(west + 3, -1)}));
  }
  var centroid = pois.geometry().centroid(1);
  return ee.FeatureCollection(zones).filterBounds(centroid).first().get('crs');
}

/** Largest relative area a buffer polygon may lack against the true circle. */
var BUFFER_AREA_TOLERANCE = 1e-3;

/**
 * maxError (m) for Geometry.buffer so that its inscribed polygon keeps the circle's area to
 * within BUFFER_AREA_TOLERANCE: the stray r(1 - cos(pi/n)) of the smallest regular n-gon
 * whose area deficit 1 - sin(2pi/n)/(2pi/n) is within it (as the Python source).
 */
function bufferMaxError(radius) {
  var n = 3;
  while (1 - Math.sin(2 * Math.PI / n) / (2 * Math.PI / n) > BUFFER_AREA_TOLERANCE) n++;
  return radius * (1 - Math.cos(Math.PI / n));
}

/** The year's AlphaEarth mosaic over `region`, its 64 embedding bands. */
function embeddingImage(year, region) {
  return ee.ImageCollection(COLLECTION)
      .filterDate(year + '-01-01', (year + 1) + '-01-01')
      .filterBounds(region)
      .mosaic()
      .select(BANDS);
}

/**
 * Buffer means of every POI for each radius: one FeatureCollection per radius, rows of
 * poi_id, radius_m, A00..A63 (a POI over no valid pixel has no A.. properties).
 * `crs` null or undefined: the POIs' UTM zone (utmCrsOf).
 */
function poiBufferMeans(pois, radii, year, crs) {
  crs = crs || utmCrsOf(pois);
  var proj = ee.Projection(crs);
  var maxRadius = Math.max.apply(null, radii);
  var region = pois.geometry().bounds().buffer(maxRadius * 1.1);
  var image = embeddingImage(year, region);
  return radii.map(function(radius) {
    var buffers = pois.map(function(f) {
      return ee.Feature(f.geometry().buffer(radius, bufferMaxError(radius), proj),
                        {poi_id: f.get('poi_id'), radius_m: radius});
    });
    var means = image.reduceRegions({
      collection: buffers, reducer: ee.Reducer.mean(), scale: SCALE, crs: proj, tileScale: 1});
    // properties only: the circles would be most of the exported bytes
    return means.map(function(f) { return ee.Feature(null, f.toDictionary()); });
  });
}

function run() {
  var pois = ee.FeatureCollection(POI_TABLE);
  var tables = poiBufferMeans(pois, RADII, YEAR, CRS);
  RADII.forEach(function(radius, k) {
    Export.table.toDrive({
      collection: tables[k],
      description: 'aether_poi_embeddings_' + YEAR + '_' + radius + 'm',
      fileFormat: 'CSV',
      selectors: ['poi_id', 'radius_m'].concat(BANDS)
    });
  });
  print('POIs', pois.size(), 'crs', CRS || utmCrsOf(pois), 'first rows', tables[0].limit(3));
}

// In Node (tests) this file is a module; in the Code Editor it runs.
if (typeof module !== 'undefined' && module.exports) {
  module.exports = {poiBufferMeans: poiBufferMeans, embeddingImage: embeddingImage,
                    utmCrs: utmCrs, utmCrsOf: utmCrsOf, bufferMaxError: bufferMaxError,
                    BANDS: BANDS, COLLECTION: COLLECTION, SCALE: SCALE};
} else {
  run();
}
