/**
 * aether — per-POI AlphaEarth buffer means, as an Earth Engine Code Editor script.
 *
 * The same computation as `aether extract --source ee`: the year's mosaic of
 * GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL (filtered by date and by the POIs' bounds), its 64
 * bands A00..A63, a weighted Reducer.mean over a circle of each radius around each POI, at
 * 10 m in the POI's own UTM zone, as the Python route does: the POIs are grouped by zone on
 * the server (each POI's zone from its longitude and hemisphere, as aether.core.aef.utm_epsg)
 * and each group is reduced in its zone's projection; the groups' rows are one table again.
 * A city across a zone edge gets on each side the pixels Earth Engine stores there, not
 * pixels resampled into a neighbouring zone. The circles are drawn in that UTM projection
 * with a maxError that keeps their area within 1e-3 of the true
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
// The crs to reduce in. null: each POI in its own WGS84 UTM zone, found on the server
// (what aether does); or force one for every POI, e.g. 'EPSG:32648'.
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

/** The 120 WGS84 UTM zones' crs: index zone - 1 in the north, 60 + zone - 1 in the south. */
var UTM_CRS = [];
for (var h = 0; h < 2; h++) {
  for (var z = 0; z < 60; z++) UTM_CRS.push(utmCrs(-177 + 6 * z, h ? -1 : 1));
}

/**
 * Each POI with a `utm_zone` property: the index in UTM_CRS of the zone holding it (its
 * 6-degree band from -180, north for a latitude >= 0: utmCrs), computed by Earth Engine, so
 * a table asset of any city, or of many, needs no edit here.
 */
function withUtmZone(pois) {
  return pois.map(function(f) {
    var xy = ee.List(f.geometry().centroid(1).coordinates());
    var lon = ee.Number(xy.get(0));
    var lat = ee.Number(xy.get(1));
    var band = lon.add(180).divide(6).floor().mod(60);
    return f.set('utm_zone', band.add(lat.lt(0).multiply(60)).int());
  });
}

/** The UTM zones the POIs lie in, as a server-side list of indices into UTM_CRS. */
function utmZonesOf(tagged) {
  return ee.List(tagged.aggregate_array('utm_zone')).distinct();
}

/** The crs of the UTM zones the POIs lie in (a server-side list of strings). */
function utmCrsOf(pois) {
  var crs = ee.List(UTM_CRS);
  return utmZonesOf(withUtmZone(pois)).map(function(zone) { return crs.get(zone); });
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
 * `crs` null or undefined: each POI in its own UTM zone (the POIs grouped by zone, one
 * reduceRegions per zone, the rows flattened into one table); else every POI in `crs`.
 */
function poiBufferMeans(pois, radii, year, crs) {
  var maxRadius = Math.max.apply(null, radii);
  var region = pois.geometry().bounds().buffer(maxRadius * 1.1);
  var image = embeddingImage(year, region);
  var tagged = withUtmZone(pois);
  var zones = utmZonesOf(tagged);
  var zoneCrs = ee.List(UTM_CRS);
  return radii.map(function(radius) {
    if (crs) return reduceIn(image, pois, radius, ee.Projection(crs));
    return ee.FeatureCollection(zones.map(function(zone) {
      var members = tagged.filter(ee.Filter.eq('utm_zone', zone));
      return reduceIn(image, members, radius, ee.Projection(zoneCrs.get(zone)));
    })).flatten();
  });
}

/** The buffer means of `pois` at one radius, the circles drawn and reduced in `proj`. */
function reduceIn(image, pois, radius, proj) {
  var buffers = pois.map(function(f) {
    return ee.Feature(f.geometry().buffer(radius, bufferMaxError(radius), proj),
                      {poi_id: f.get('poi_id'), radius_m: radius});
  });
  var means = image.reduceRegions({
    collection: buffers, reducer: ee.Reducer.mean(), scale: SCALE, crs: proj, tileScale: 1});
  // properties only: the circles would be most of the exported bytes
  return means.map(function(f) { return ee.Feature(null, f.toDictionary()); });
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
                    utmCrs: utmCrs, utmCrsOf: utmCrsOf, withUtmZone: withUtmZone,
                    UTM_CRS: UTM_CRS, bufferMaxError: bufferMaxError,
                    BANDS: BANDS, COLLECTION: COLLECTION, SCALE: SCALE};
} else {
  run();
}
