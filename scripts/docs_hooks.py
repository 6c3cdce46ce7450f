"""MkDocs hooks (mkdocs.yml ``hooks``): the pages' generated parts, made from the code and the results
files at every build, so they cannot drift from what they describe.

A page asks for a part with an HTML comment on a line of its own, ``<!-- generated: NAME ARGS -->``:

- ``cli``: every verb of ``runtime.cli.app.VERBS`` from its typer/click command (arguments, options,
  defaults, help, examples);
- ``http``: the service's routes from the FastAPI app's OpenAPI schema (``runtime.serve.ingress.api``;
  importing it starts no Ray);
- ``benchmarks``: one table per ``benchmarks/results/*.json``, naming its machine and date;
- ``latency FILE``: a ``benchmarks/latency.py`` results file, backend by backend;
- ``results FILE``: one results file's table, as the benchmarks page shows it;
- ``install-sizes``: the measured size of each install (``*-install-size.json``);
- ``levels PRESET``: the resolution of each decoder block's noise slice (``cvdvae.noise_layout``).

and a figure inline with ``<!-- result: NAME -->`` (``RESULTS`` below). An unknown name, a results file
without a date or a failing import fails the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
GENERATED = re.compile(r"^<!-- generated: ([a-z-]+)((?: [\w.-]+)*) -->$", re.M)
RESULT = re.compile(r"<!-- result: ([a-z0-9-]+) -->")
ROW_LISTS = ("rows", "results", "configs", "cases")  # where a results file keeps its table


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------

def option_row(param: Any) -> list[Any]:
    names = ", ".join(f"`{o}`" for o in [*param.opts, *getattr(param, "secondary_opts", [])])
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}` (argument)"
    kind = getattr(param, "type", None)
    kind = "flag" if getattr(param, "is_flag", False) else (kind.name if kind is not None else "")
    if getattr(param, "multiple", False):
        kind += ", repeatable"
    default = param.default
    default = "" if default is None or callable(default) or param.required else f"`{default}`"
    return [names, kind, "yes" if param.required else "", default, getattr(param, "help", None) or ""]


def cli_reference() -> str:
    from runtime.cli.app import VERBS, load_verb

    parts = []
    for name, verb in VERBS.items():
        command = load_verb(name)
        extras = ", ".join(f"`{e}`" for e in verb.extras) or "none (the base install)"
        parts.append(f"## `cvdvae {name}`\n\n{command.help or verb.help}\n\nExtra needed: {extras}. Also installed "
                     f"as `cvdvae-{name}`.\n")
        rows = [option_row(p) for p in command.params if not getattr(p, "hidden", False)]
        parts.append(table(["option", "type", "required", "default", "what"], rows) + "\n")
        if command.epilog:
            examples = [line.strip() for line in command.epilog.splitlines() if line.strip().startswith("cvdvae")]
            if examples:
                parts.append("<!-- not run: the guides' examples run; these are the command's own --help -->\n"
                             "```bash\n" + "\n".join(examples) + "\n```\n")
    return "\n".join(parts)


# --- the HTTP API -------------------------------------------------------------------------------

def schema_text(schema: dict[str, Any]) -> str:
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "properties" in schema:
        return ", ".join(f"`{k}`: {schema_text(v)}" for k, v in schema["properties"].items())
    return schema.get("type", "object")


def field_type(spec: dict[str, Any]) -> str:
    if "oneOf" in spec:
        return " or ".join(field_type(s) for s in spec["oneOf"])
    kind = spec.get("type", "any")
    if kind == "array":
        kind = f"list of {field_type(spec.get('items', {}))}"
    bounds = [f"{word} {cell(int(spec[key]) if float(spec[key]).is_integer() else spec[key])}"
              for key, word in (("minimum", ">="), ("maximum", "<=")) if key in spec]
    extra = [spec[key] for key in ("format", "contentEncoding") if key in spec]
    return " ".join([kind, *extra, *(f"({b})" for b in bounds)])


def http_reference() -> str:
    from runtime.serve.ingress import api

    spec = api.openapi()
    parts = [f"Schema version {spec['openapi']}, API `{spec['info']['title']}` version {spec['info']['version']}: "
             f"{spec['info'].get('description', '')}\n"]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            parts.append(f"## `{method.upper()} {path}`\n\n{op.get('summary', '')}\n")
            if op.get("description"):
                parts.append(op["description"] + "\n")
            params = op.get("parameters", [])
            if params:
                rows = [[f"`{p['name']}`", p["in"], p.get("required", False), schema_text(p.get("schema", {}))]
                        for p in params]
                parts.append(table(["parameter", "in", "required", "schema"], rows) + "\n")
            for kind, content in op.get("requestBody", {}).get("content", {}).items():
                fields = content.get("schema", {}).get("properties", {})
                parts.append(f"Request body, `{kind}`:\n\n" + table(
                    ["field", "type", "default", "what"],
                    [[f"`{name}`", field_type(spec), spec.get("default", ""), spec.get("description", "")]
                     for name, spec in fields.items()]) + "\n")
            parts.append(table(["status", "what", "content"],
                               [[code, r.get("description", ""), ", ".join(f"`{c}`" for c in r.get("content", {}))]
                                for code, r in op.get("responses", {}).items()]) + "\n")
    return "\n".join(parts)


# --- benchmarks ---------------------------------------------------------------------------------

def results_files() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if "date" not in data:
            raise ValueError(f"{path.relative_to(REPO)} has no date field: a results file names when it was measured")
        found.append((path, data))
    return found


def machine(data: dict[str, Any]) -> str:
    env = data.get("environment") or data.get("machine") or {}
    if not env:
        return "not recorded in the file (its name gives the machine)"
    words = [f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores)"]
    if env.get("gpu"):
        words.append(f"{env['gpu']}")
    words += [f"{k} {env[k]}" for k in ("python", "torch", "onnxruntime", "openvino", "tensorrt") if env.get(k)]
    return ", ".join(words)


def rows_of(data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    for key in ROW_LISTS:
        if isinstance(data.get(key), list) and data[key] and isinstance(data[key][0], dict):
            return key, data[key]
    for key, value in data.items():  # a mapping of named rows (installs, profiles)
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            return key, [{"name": k, **v} for k, v in value.items()]
    return None


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values, a nested mapping's as ``key.sub`` (lists are left out: they do not fit a cell)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            out[key] = value
    return out


def scalar_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def results_table(name: str, data: dict[str, Any]) -> str:
    """One results file: its date and machine, its settings, and its rows as a table."""
    parts = [f"Measured **{data['date']}** on {machine(data)} (`benchmarks/results/{name}`).\n"]
    settings = {k: v for k, v in data.items()
                if k not in ("date", "environment", "machine") and not isinstance(v, (dict, list))}
    if settings:
        parts.append("Settings: " + ", ".join(f"{k} `{cell(v)}`" for k, v in settings.items()) + ".\n")
    found = rows_of(data)
    if found:
        key, rows = found
        rows = [flat(row) for row in rows]
        columns = scalar_columns(rows)
        parts.append(f"`{key}`:\n\n" + table(columns, [[row.get(c) for c in columns] for row in rows]) + "\n")
    return "\n".join(parts)


def benchmark_tables() -> str:
    return "\n".join(f"### `{path.name}`\n\n" + results_table(path.name, data) for path, data in results_files())


def one_result(name: str) -> str:
    return results_table(name, results_file(name))


def results_file(name: str) -> dict[str, Any]:
    for path, data in results_files():
        if path.name == name:
            return data
    raise ValueError(f"benchmarks/results/{name} does not exist")


def latency(name: str) -> str:
    """A ``benchmarks/latency.py`` results file as the benchmark page shows it."""
    data = results_file(name)
    peaks = data.get("matmul_peak", {})
    rows = []
    for r in data["results"]:
        peak = peaks.get("cpu_bf16_gflops" if r["precision"] == "bf16" else "cpu_fp32_gflops")
        gflops = f"{r['gflops']:.0f}" + (f" ({r['gflops'] / peak:.0%} of {r['precision']})" if peak else "")
        if r.get("psnr_db") is not None and r["precision"] != "fp32":
            agreement = f"PSNR {r['psnr_db']:.1f} dB"
        elif r.get("max_abs_away_from_flips") is not None:
            agreement = (f"{r['max_abs_away_from_flips']:.1e} ({r['flipped_pixels']} flips, {r['tail_pixels']} tails)"
                         f"; all {r['max_abs']:.1e}")
        else:
            agreement = "-"
        rows.append([r["backend"], r["precision"], r["n"], f"{r['median_ms'] / 1000:.2f}",
                     f"{r['median_ms'] / 1000 / r['n']:.2f}", f"{r['samples_per_s']:.3f}", f"{r['speedup']:.2f}",
                     gflops, f"{r['peak_rss_mib'] / 1024:.1f} GiB", agreement, "**yes**" if r.get("flagged") else ""])
    limits = ", ".join(f"{k.removeprefix('cpu_').removesuffix('_gflops')} {v:.0f} GFLOP/s" for k, v in peaks.items())
    return (f"`{name}`: measured **{data['date']}** on {machine(data)}; model `{data['model'].get('preset')}`, "
            f"settings {json.dumps(data.get('settings', {}))}. Matmul peaks: {limits}.\n\n" +
            table(["backend", "precision", "n", "s/call", "s/sample", "samples/s", "vs torch eager", "GFLOP/s",
                   "peak RSS", "vs torch FP32 (max abs away from flips; PSNR for reduced precision)", "flagged"],
                  rows) + "\n")


def install_sizes() -> str:
    path, data = next((p, d) for p, d in results_files() if p.name.endswith("install-size.json"))
    rows = [[f"`{name}`", f"{row['site_packages_mb']:,.0f} MB" if "site_packages_mb" in row else cell(row)]
            for name, row in data["installs"].items()]
    return (table(["install", "site-packages"], rows) +
            f"\n\nMeasured {data['date']} on {machine(data)} by `benchmarks/install_size.py` (`{path.name}`).\n")


# --- levels -------------------------------------------------------------------------------------

def levels(preset_name: str) -> str:
    from cvdvae.config import preset
    from cvdvae.noise_layout import NoiseLayout

    layout = NoiseLayout.from_config(preset(preset_name))
    by_level: dict[int, list[Any]] = {}
    for s in layout.latents:
        by_level.setdefault(s.res, []).append(s)
    rows = [[f"{res}x{res}", f"{group[0].block}..{group[-1].block}", len(group), f"{group[0].offset:,}",
             f"{sum(s.size for s in group):,}"] for res, group in by_level.items()]
    rows.append([f"pixels {layout.image_size}x{layout.image_size}", "-", "-", f"{layout.pixel_offset:,}",
                 f"{layout.pixel_size:,}"])
    return (table(["level", "decoder blocks", "blocks", "first noise offset", "noise values"], rows) +
            f"\n\n`D` = {layout.dim:,} values per sample.\n")


def diversity_levels(name: str) -> str:
    """A ``benchmarks/levels.py`` results file: per level, the diversity that remains and its quality."""
    data = results_file(name)
    columns = [("apd_mse", "APD-MSE", 3), ("apd_lpips", "APD-LPIPS", 3), ("mean_std", "mean std", 1),
               ("lr_psnr", "LR-PSNR (dB)", 1), ("brisque", "BRISQUE", 1)]
    rows = [[f"{level} px", *(round(row[key], digits) if row.get(key) is not None else None
                                for key, _, digits in columns)] for level, row in data["levels"].items()]
    return (f"Measured **{data['date']}** on {machine(data)} (`benchmarks/results/{name}`; model: "
            f"{data['model']}, n = {data['n']}, t = {data['temperature']}).\n\n"
            + table(["varied from", *(title for _, title, _ in columns)], rows) + "\n")


# --- figures inline -----------------------------------------------------------------------------

def bf16_speedup() -> str:
    """OpenVINO bf16 over OpenVINO FP32 at the largest n of the latest latency results that have both."""
    for path, data in sorted(results_files(), key=lambda pd: pd[1]["date"], reverse=True):
        rows = data.get("results") if isinstance(data.get("results"), list) else []
        fp32 = {r["n"]: r for r in rows if r.get("backend") == "openvino" and r.get("precision") == "fp32"}
        bf16 = {r["n"]: r for r in rows if r.get("backend") == "openvino-bf16"}
        common = sorted(set(fp32) & set(bf16))
        if common:
            n = common[-1]
            ratio = bf16[n]["samples_per_s"] / fp32[n]["samples_per_s"]
            return f"{ratio:.2f}"
    raise ValueError("no results file has OpenVINO FP32 and bf16 rows")


PARTS: dict[str, Callable[..., str]] = {
    "cli": cli_reference, "http": http_reference, "benchmarks": benchmark_tables, "latency": latency,
    "results": one_result, "install-sizes": install_sizes, "levels": levels,
    "diversity-levels": diversity_levels}
def serve_batching_speedup() -> str:
    return f"{results_file('cpu-2core-intel-xeon-serve-load.json')['batching_speedup']:.2f}"


RESULTS: dict[str, Callable[[], str]] = {"bf16-speedup": bf16_speedup, "serve-batching-speedup": serve_batching_speedup}


def expand(markdown: str) -> str:
    def part(match: re.Match) -> str:
        return PARTS[match.group(1)](*match.group(2).split())

    def result(match: re.Match) -> str:
        return RESULTS[match.group(1)]()

    return RESULT.sub(result, GENERATED.sub(part, markdown))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return expand(markdown)
