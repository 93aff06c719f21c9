"""Generic helpers that write Grafana 10.4 dashboard JSON (stdlib only); no content of ours here.

Hand-written rather than grafana-foundation-sdk: the few shapes the dashboard needs stay readable
and the builder runs with a bare `python3`. `build_dashboard.py` holds what the dashboard shows.
Every query runs on the dashboard's `datasource` variable, so no datasource uid is stored.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}

# --- field config -------------------------------------------------------------------------------


def steps(*pairs: tuple[float | None, str]) -> dict[str, Any]:
    """Absolute thresholds from (value, colour) pairs, the base one with value None. Sorted, as
    Grafana expects them, since values that come from options may arrive in any order."""
    ordered = sorted(pairs, key=lambda pair: (pair[0] is not None, pair[0] or 0))
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in ordered],
    }


GREEN = steps((None, "green"))
ANY_IS_BAD = steps((None, "green"), (1, "red"))


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Grafana value mappings: raw value -> (display text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                raw: {"text": text, "color": color, "index": i}
                for i, (raw, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def override(name: str, *props: tuple[str, Any], regex: bool = False) -> dict[str, Any]:
    """Field properties for the field called `name` (or matching it, with `regex`)."""
    return {
        "matcher": {"id": "byRegexp" if regex else "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in props],
    }


def fixed_color(name: str, color: str, *, regex: bool = False) -> dict[str, Any]:
    return override(name, ("color", {"mode": "fixed", "fixedColor": color}), regex=regex)


def column(name: str, display: str, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    """A table column's title, unit and any other field property."""
    props: list[tuple[str, Any]] = [("displayName", display)]
    if unit:
        props.append(("unit", unit))
    props.extend(extra.items())
    return override(name, *props)


def colored_text(mappings: list[dict[str, Any]]) -> dict[str, Any]:
    """Properties (for `column(**...)`) that colour a cell's text by its value mapping."""
    return {"custom.cellOptions": {"type": "color-text"}, "mappings": mappings}


def organize(
    exclude: tuple[str, ...] = (), order: tuple[str, ...] = (), rename: dict[str, str] | None = None
) -> dict[str, Any]:
    """The `organize` transformation: hide, order and rename fields."""
    return {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(exclude, True),
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": rename or {},
        },
    }


# --- queries and panels -------------------------------------------------------------------------


def target(
    expr: str, ref: str = "A", legend: str = "", *, instant: bool = False, table: bool = False
) -> dict[str, Any]:
    """A PromQL query of a panel."""
    return {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
        "editorMode": "code",
    }


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    size: tuple[int, int],
    *,
    unit: str | None = None,
    thresholds: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    color_mode: str = "thresholds",
    extra_defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Any panel; `size` is (width, height) in grid units, `layout()` places it."""
    defaults: dict[str, Any] = {
        "color": {"mode": color_mode},
        "thresholds": thresholds or GREEN,
        "mappings": mappings or [],
    }
    if unit:
        defaults["unit"] = unit
    if custom:
        defaults["custom"] = custom
    defaults.update(extra_defaults or {})
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": size[0], "h": size[1]},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        out["transformations"] = transformations
    return out


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    width: int,
    *,
    unit: str = "short",
    thresholds: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A stat panel, 4 units high, its background coloured by the last value."""
    return panel(
        "stat",
        title,
        description,
        targets,
        (width, 4),
        unit=unit,
        thresholds=thresholds,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
        **kwargs,
    )


TABLE_CUSTOM = {
    "align": "auto",
    "cellOptions": {"type": "auto"},
    "inspect": False,
    "filterable": True,
}


def table(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    size: tuple[int, int],
    *,
    sort_by: str | None = None,
    desc: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """A filterable table, sorted by the column titled `sort_by`."""
    options: dict[str, Any] = {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
    }
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": desc}]
    return panel(
        "table", title, description, targets, size, custom=TABLE_CUSTOM, options=options, **kwargs
    )


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    size: tuple[int, int],
    *,
    stack: bool = False,
    bars: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """A time series graph with a table legend (last and max) on the right."""
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "gradientMode": "none",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": False,
        "axisPlacement": "auto",
        "axisSoftMin": 0,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }
    options = {
        "legend": {
            "displayMode": "table",
            "placement": "right",
            "showLegend": True,
            "calcs": ["lastNotNull", "max"],
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    kwargs.setdefault("color_mode", "palette-classic")
    return panel(
        "timeseries", title, description, targets, size, custom=custom, options=options, **kwargs
    )


def bargauge(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    size: tuple[int, int],
    **kwargs: Any,
) -> dict[str, Any]:
    """Horizontal bars, one per series, coloured by value."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "basic",
        "valueMode": "color",
        "namePlacement": "auto",
        "showUnfilled": True,
        "sizing": "auto",
        "minVizWidth": 8,
        "minVizHeight": 16,
        "maxVizHeight": 300,
    }
    return panel("bargauge", title, description, targets, size, options=options, **kwargs)


def row(title: str) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"w": 24, "h": 1},
        "panels": [],
    }


def query_variable(name: str, label: str, query: str, **extra: Any) -> dict[str, Any]:
    """A multi-value template variable with All (`.*`), refreshed when the time range changes."""
    var: dict[str, Any] = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }
    var.update(extra)
    return var


def collapse(panels: list[dict[str, Any]], open_rows: frozenset[str]) -> list[dict[str, Any]]:
    """Rows not in `open_rows` start collapsed, their panels inside them (Grafana's form): the
    queries of a collapsed row run only once it is opened."""
    out: list[dict[str, Any]] = []
    inside: dict[str, Any] | None = None
    for item in panels:
        if item["type"] == "row":
            inside = None if item["title"] in open_rows else item
            item["collapsed"] = inside is not None
            out.append(item)
        elif inside is not None:
            inside["panels"].append(item)
        else:
            out.append(item)
    return out


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assigns ids and grid positions left to right, wrapping at Grafana's 24 columns."""
    x = y = row_height = 0
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        grid = item["gridPos"]
        if x + grid["w"] > 24 or item["type"] == "row":
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        if item["type"] == "row":
            x, y, row_height = 0, y + grid["h"], 0
    return panels
