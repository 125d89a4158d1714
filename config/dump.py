"""Writing a configuration file: the demo stack, the test cluster and the tests generate
controlroom's TOML from a dict."""

from __future__ import annotations

import json
from typing import Any


def toml_dump(data: dict[str, Any]) -> str:
    """A small TOML writer for the generated configuration (tables, arrays of tables)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))

    out: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    out += [f"{k} = {value(v)}" for k, v in scalars.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(f"\n[{k}]")
            out += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"\n[[{k}]]")
                out += [f"{kk} = {value(vv)}" for kk, vv in item.items()]
        elif isinstance(v, list):
            out.append(f"{k} = {value(v)}")
    return "\n".join(out) + "\n"
