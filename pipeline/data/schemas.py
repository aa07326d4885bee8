"""The columns and dtypes of every table the product writes: results of enrol, identify and verify, and rejects.

One definition a table, so an empty result has exactly the columns and dtypes of a full one (a job reading
the output never special-cases "no rows"). `conform` puts a table into its schema: the schema's columns first,
in order, cast to their dtypes (missing ones are added as nulls); other columns (a verify probe's own columns,
say) follow unchanged.
"""

from __future__ import annotations

import pandas as pd

from pipeline.core.errors import DataError

# pandas dtypes; "string" is pandas' nullable string, "boolean" / "Int64" its nullable bool / int
REJECTS: dict[str, str] = {"image_path": "string", "error": "string"}
# what the face aligner measured on the (probe or enrolled) photo; null for a model without alignment.
# faces_found: detections in the photo (1 for --aligned input); face_score: detector score; interocular_px:
# eye distance in the photo; sharpness: of the aligned crop; yaw_deg: estimated head turn; quality_flags:
# comma-separated policy codes the face breaks (query mode lets it through: "" = none; see pipeline/faces/policy.py)
FACE: dict[str, str] = {"faces_found": "Int64", "face_score": "float32", "interocular_px": "float32",
                        "sharpness": "float32", "yaw_deg": "float32", "quality_flags": "string"}
ENROLLED: dict[str, str] = {"row_id": "int64", "identity": "string", "image_path": "string", "image_sha256": "string",
                            **FACE}
IDENTIFY: dict[str, str] = {"image_path": "string", "rank": "int64", "identity": "string", "score": "float32",
                            "decision": "string", "model_version": "string", **FACE}
VERIFY: dict[str, str] = {"image_path": "string", "claimed_identity": "string", "score": "float32",
                          "threshold": "float64", "match": "bool", "known": "bool", "model_version": "string", **FACE}


def empty(schema: dict[str, str]) -> pd.DataFrame:
    """A table with no rows and exactly the schema's columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in schema.items()})


def conform(table: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """``table`` with the schema's columns first (cast; missing ones null) and its other columns after."""
    out = pd.DataFrame(index=table.index)
    for name, dtype in schema.items():
        if name in table.columns:
            try:
                out[name] = table[name].astype(dtype)
            except (TypeError, ValueError) as exc:
                raise DataError(f"column {name!r} cannot be stored as {dtype}: {exc}") from exc
        else:
            # numpy bool / int columns cannot hold nulls: missing values of a non-empty table are pandas' nullable
            # bool / Int64; float columns hold NaN
            fill = {"bool": "boolean", "int64": "Int64"}.get(dtype, dtype) if len(table) else dtype
            out[name] = pd.Series(index=table.index, dtype=fill)
    for name in table.columns:
        if name not in schema:
            out[name] = table[name]
    return out.reset_index(drop=True)
