/**
 * aether — per-POI AlphaEarth buffer means, as an Earth Engine Code Editor script.
 *
 * The same computation as `aether extract --source ee`: the year's mosaic of
 * GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL (filtered by date and by the POIs' bounds), its 64
 * bands A00..A63, a weighted Reducer.mean over a circle of each radius around each POI, at
 * 10 m in the POIs' UTM zone. Earth Engine weights each pixel by the fraction of it inside
 * the circle, exactly as aether's zonal kernel does, so the numbers match
 * poi_embeddings.parquet (aether asks for sums plus a valid-pixel band instead, to also get
 * `weight` and `valid_fraction`; the means are the same). tests/integration/test_ee_script.py runs this
 * file under Node with the @google/earthengine client and checks that against the emulator.
 *
 * Use: paste into https://code.earthengine.google.com, set the four parameters below, Run,
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
// The UTM zone of the POIs (aether uses the zone of the data: EPSG:326zz north, 327zz south).
var CRS = 'EPSG:32648';

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
 */
function poiBufferMeans(pois, radii, year, crs) {
  var maxRadius = Math.max.apply(null, radii);
  var region = pois.geometry().bounds().buffer(maxRadius * 1.1);
  var image = embeddingImage(year, region);
  return radii.map(function(radius) {
    var buffers = pois.map(function(f) {
      return ee.Feature(f.geometry().buffer(radius),
                        {poi_id: f.get('poi_id'), radius_m: radius});
    });
    var means = image.reduceRegions({
      collection: buffers, reducer: ee.Reducer.mean(), scale: SCALE, crs: crs, tileScale: 1});
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
  print('POIs', pois.size(), 'first rows', tables[0].limit(3));
}

// In Node (tests) this file is a module; in the Code Editor it runs.
if (typeof module !== 'undefined' && module.exports) {
  module.exports = {poiBufferMeans: poiBufferMeans, embeddingImage: embeddingImage,
                    utmCrs: utmCrs, BANDS: BANDS, COLLECTION: COLLECTION, SCALE: SCALE};
} else {
  run();
}
