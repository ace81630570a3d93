"""What a user says about where a place is, beside its name: checked once, carried typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from aether.errors import PlaceError
from aether.places.place import Place, parse_bbox, resolve_place


class PlaceQuery(BaseModel):
    """How to find a place other than by its name alone: an OSM boundary id, a bbox
    (``W,S,E,N`` degrees), a boundary file, which geocoding result, and ``yes`` to accept an
    area above the size limit. Empty: geocode the name (or take the POIs' extent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    osm_id: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    boundary: Path | None = None
    which_result: int | None = None  # resolve_place refuses < 1 with its own message
    yes: bool = False

    @field_validator("bbox", mode="before")
    @classmethod
    def _bbox(cls, value: Any) -> Any:
        """``"W,S,E,N"`` or four numbers, checked (a PlaceError says what is wrong)."""
        return None if value is None else parse_bbox(value)

    @classmethod
    def of(cls, **given: Any) -> PlaceQuery:
        """The query from keyword values (None: not given); PlaceError for a bad one."""
        try:
            return cls.model_validate({k: v for k, v in given.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise PlaceError(f"place option {key}: {err['msg']}",
                             "see `aether extract --help`") from None

    @property
    def given(self) -> bool:
        """Whether anything says where the place is beyond its name (``yes`` does not: it
        accepts a large place however it is found, a POI file's hull too)."""
        return bool(self.model_dump(exclude_defaults=True, exclude={"yes"}))

    def resolve(self, name: str | None) -> Place:
        """The place (PlaceError for every way it can fail; see ``resolve_place``)."""
        return resolve_place(name, **self.model_dump(exclude_defaults=True))
