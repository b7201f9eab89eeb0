"""Helpers of the sample-stream tests: a data config on a pair folder and a :class:`SampleMaker` without Ray."""

from cmd_ray.config import load_config
from cmd_ray.data.distill_stream import SampleMaker, list_pairs


def data_config(uri: str, *overrides: str):
    return load_config(None, [f"data.uri={uri}", "data.progress=false", *overrides])


def maker_for(cfg, table=None, stream=0) -> SampleMaker:
    table = list_pairs(cfg) if table is None else table
    return SampleMaker(table, cfg.data.model_dump(mode="json"), 0, stream, None, None, mixing=cfg.distill.mixing)
