"""An Overture Places release for tests: a GeoParquet release in the real Overture schema
made from OSM POIs, and an anonymous public S3 service on loopback (moto) serving it, read
through the same pyarrow code path as the public release."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

RELEASE = "2099-01-01.0"
BUCKET = "overture-test"


def overture_table(pois: pd.DataFrame):
    """The places of ``pois`` as an Overture Places table (id, geometry WKB, bbox, names,
    categories, taxonomy, confidence, ...), the schema of the public releases."""
    import pyarrow as pa
    import shapely

    rng = np.random.default_rng(0)
    codes = [c.replace(" ", "_") for c in pois["category"]]
    tops = [t.replace(" ", "_") for t in pois["top_category"]]
    xy = shapely.get_coordinates(pois.geometry.values)
    n = len(pois)
    names = pa.array([{"primary": None if pd.isna(nm) else nm, "common": None, "rules": None}
                      for nm in pois["name"]],
                     pa.struct([("primary", pa.string()),
                                ("common", pa.map_(pa.string(), pa.string())),
                                ("rules", pa.list_(pa.struct([("variant", pa.string()),
                                                              ("value", pa.string())])))]))
    return pa.table({
        "id": pa.array([f"08f{i:012x}" for i in range(n)]),
        "geometry": pa.array(shapely.to_wkb(pois.geometry.values), pa.binary()),
        "bbox": pa.array([{"xmin": x, "xmax": x, "ymin": y, "ymax": y} for x, y in xy],
                         pa.struct([(k, pa.float32()) for k in ("xmin", "xmax", "ymin", "ymax")])),
        "version": pa.array([0] * n, pa.int32()),
        "names": names,
        "categories": pa.array([{"primary": c, "alternate": None} for c in codes],
                               pa.struct([("primary", pa.string()),
                                          ("alternate", pa.list_(pa.string()))])),
        "basic_category": pa.array(codes),
        "taxonomy": pa.array([{"primary": c, "hierarchy": [t, c], "alternates": None}
                              for c, t in zip(codes, tops, strict=True)],
                             pa.struct([("primary", pa.string()),
                                        ("hierarchy", pa.list_(pa.string())),
                                        ("alternates", pa.list_(pa.string()))])),
        "confidence": pa.array(rng.uniform(0.2, 1.0, n)),
        "operating_status": pa.array(["open"] * n),
    })


def write_release(root: Path, pois: pd.DataFrame, release: str = RELEASE) -> None:
    import pyarrow.parquet as pq

    part = root / release / "theme=places" / "type=place"
    part.mkdir(parents=True)
    table = overture_table(pois)
    half = table.num_rows // 2  # two files, row groups of 500: the bbox filter has to work
    pq.write_table(table.slice(0, half), part / "part-00000.parquet", row_group_size=500)
    pq.write_table(table.slice(half), part / "part-00001.parquet", row_group_size=500)


@contextlib.contextmanager
def loopback_s3(root: Path) -> Iterator[dict[str, str]]:
    """Serve the releases under ``root`` from a public bucket of an S3 service on 127.0.0.1;
    yields the settings that point aether at it (``AETHER_OVERTURE_ROOT`` / ``_ENDPOINT``)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-west-2",
                          aws_access_key_id="test", aws_secret_access_key="test")
        # botocore may send it again after a slow first answer under load
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        # public and anonymous, like Overture's own bucket
        s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
        for f in root.rglob("*.parquet"):
            s3.upload_file(str(f), BUCKET, f"release/{f.relative_to(root)}")
        yield {"AETHER_OVERTURE_ROOT": f"s3://{BUCKET}/release",
               "AETHER_OVERTURE_ENDPOINT": endpoint}
    finally:
        server.stop()
