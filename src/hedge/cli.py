"""The `hedge` command: serve, chat, config check.

Each subcommand parses its arguments, loads Settings once, and runs one async function with
asyncio.run; nothing here knows a wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from hedge import config
from hedge.catalog import Catalog, filter_models, to_row
from hedge.errors import ConfigError, HedgeError
from hedge.fit import estimate_fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hedge", description="A self-hosted LLM gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", help="path to hedge.yaml (default: $HEDGE_CONFIG, ./hedge.yaml, built-in)"
    )
    serve.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default from config: 8080)")
    serve.add_argument(
        "--wait-for-models",
        action="store_true",
        help="load every embedded model before accepting requests",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes sharing the port, supervised (default: 1); state such as "
        "breakers and the memory cache is per worker",
    )
    # Set by the supervisor of `--workers N` on the workers it starts.
    serve.add_argument("--worker-fds", help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)

    chat = sub.add_parser("chat", help="send one prompt and stream the answer")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="default", help="route name (default: default)")
    chat.add_argument("--url", help="gateway base URL (default: the configured address)")
    chat.add_argument("--config", help="config for the address, or for running in-process")
    chat.add_argument(
        "--local", action="store_true", help="run in-process instead of calling a gateway"
    )
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)

    models = sub.add_parser("models", help="list the provenance catalog, with filters")
    models.add_argument("--config", help="hedge.yaml whose 'models:' extend the catalog")
    models.add_argument("--license", action="append", help="licence id (repeatable)")
    models.add_argument("--origin", action="append", help="ISO country of the lab (repeatable)")
    models.add_argument("--open-weights", action="store_true", help="open weights only")
    models.add_argument(
        "--commercial",
        choices=["yes", "conditions", "no"],
        action="append",
        help="commercial use allowed by the licence (repeatable)",
    )
    models.add_argument("--max-active-params", type=float, help="billions of active parameters")
    models.add_argument("--json", action="store_true", help="JSON instead of a table")
    models_sub = models.add_subparsers(dest="models_command")
    fit = models_sub.add_parser("fit", help="which models fit on given GPUs, with the arithmetic")
    fit.add_argument("--gpu-mem", type=float, required=True, help="GB of memory per GPU")
    fit.add_argument("--gpus", type=int, default=1)
    fit.add_argument("--quant", choices=["q4", "q8", "fp8", "fp16"], default="q4")
    fit.add_argument("--context", type=int, default=8192, help="tokens of context per sequence")
    fit.add_argument("--model", action="append", help="catalog id (repeatable; default: all)")
    fit.add_argument("--json", action="store_true")

    _operations(sub)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a hedge.yaml and summarise it")
    check.add_argument("path")

    return parser


def _operations(sub: Any) -> None:
    """Operator commands: drill, costs, replay, doctor."""
    from hedge import replay_report

    replay_report.add_arguments(
        sub.add_parser("replay", help="replay a route on a recorded data set")
    )
    from hedge.evaluation import cli as evaluation_cli

    evaluation_cli.add_arguments(sub.add_parser("eval", help="evaluate routes on a suite"))
    drill = sub.add_parser("drill", help="cut a deployment off at runtime (kill-switch drill)")
    action = drill.add_mutually_exclusive_group(required=True)
    action.add_argument("--revoke", metavar="DEPLOYMENT")
    action.add_argument("--restore", metavar="DEPLOYMENT")
    drill.add_argument("--reason", help="recorded with the revocation")
    drill.add_argument("--url", help="gateway base URL (default: the configured address)")
    drill.add_argument("--config", help="hedge.yaml (for the address and the admin key)")

    costs = sub.add_parser("costs", help="spend, successes and cost per successful outcome")
    costs.add_argument("--config", help="hedge.yaml (for the ledger and prices)")
    costs.add_argument("--since", help="e.g. 24h, 7d, 30m, or a Unix time")
    costs.add_argument("--route", help="only this route")
    costs.add_argument("--by", choices=["deployment", "route", "key"], default="route")
    costs.add_argument("--json", action="store_true")

    from hedge import keys_cli

    keys_cli.add_arguments(sub.add_parser("keys", help="create, list and revoke API keys"))
    doctor = sub.add_parser("doctor", help="audit a config for vendor concentration")
    doctor.add_argument("--config", help="path to hedge.yaml (default as for serve)")
    doctor.add_argument("--json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "chat":
            return asyncio.run(_chat(args))
        if args.command == "models":
            return _fit(args) if args.models_command == "fit" else _models(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "drill":
            return asyncio.run(_drill(args))
        if args.command == "costs":
            return asyncio.run(_costs(args))
        if args.command == "replay":
            from hedge import replay_report

            return replay_report.main(args)
        if args.command == "keys":
            from hedge import keys_cli

            return keys_cli.run(args)
        if args.command == "eval":
            from hedge.evaluation import cli as evaluation_cli

            return evaluation_cli.run(args)
        return _config_check(args.path)
    except ConfigError as e:
        print(f"hedge: configuration error\n{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


GRACEFUL_STOP_S = 30


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hedge.gateway import Gateway
    from hedge.server import workers
    from hedge.server.app import HedgeApp

    source = config.find_config(args.config)
    settings = config.load(source)
    server = settings.config.server
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    routes = ", ".join(settings.config.routes)
    worker = args.worker_fds is not None
    if not worker:
        from hedge.server.auth import check_exposure

        check_exposure(settings, host)  # without API keys, loopback only
        for warning in settings.warnings:
            print(f"hedge: warning: {warning}", file=sys.stderr)
    if args.workers > 1 and not worker:
        print(
            f"hedge: serving {routes} from {settings.source} on http://{host}:{port} "
            f"with {args.workers} workers",
            file=sys.stderr,
        )
        child = [] if source is None else ["--config", str(Path(source).resolve())]
        child += ["--wait-for-models"] if args.wait_for_models else []
        return workers.supervise(child, host, port, args.workers, GRACEFUL_STOP_S)
    from hedge import logs
    from hedge.server.auth import guard
    from hedge.server.protocol import protocol_options

    logs.configure(server.log_level, server.log_format)
    app = guard(  # API keys and their limits, in front of everything
        HedgeApp(
            Gateway.from_settings(settings),
            admin_key=settings.secrets.get(config.ADMIN_SECRET),
            wait_for_models=args.wait_for_models,
            worker=worker,
        ),
        settings,
    )
    options: dict[str, Any] = {
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        # httptools, with head size and time limits (hedge.server.protocol)
        **protocol_options(server),
        "lifespan": "on",
        "access_log": False,
        "log_level": server.log_level,
        "log_config": None,  # hedge.logs formats uvicorn's records too
        "timeout_graceful_shutdown": GRACEFUL_STOP_S,
    }
    if worker:
        fds = workers.parse_worker_fds(args.worker_fds)
        workers.run_worker(uvicorn.Config(app, **options), fds)
        return 0
    print(
        f"hedge: serving {routes} from {settings.source} on http://{host}:{port}", file=sys.stderr
    )
    uvicorn.run(app, host=host, port=port, **options)
    return 0


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _catalog(path: str | None) -> Catalog:
    return config.load(config.find_config(path)).catalog


def _models(args: argparse.Namespace) -> int:
    catalog = _catalog(args.config)
    found = filter_models(
        catalog,
        license=args.license,
        origin=args.origin,
        open_weights=True if args.open_weights else None,
        commercial=args.commercial,
        max_active_params_b=args.max_active_params,
    )
    rows = []
    for m in found:
        row = to_row(m)
        lic = catalog.licence_of(m)
        row["commercial_use"] = lic.commercial_use if lic else None
        row["osi_approved"] = lic.osi_approved if lic else None
        rows.append(row)
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    columns = [
        "id",
        "lab",
        "origin",
        "licence",
        "open_weights",
        "commercial_use",
        "params_total_b",
        "params_active_b",
        "context_window",
        "sources",
    ]
    for row in rows:
        row["sources"] = ",".join(row["sources"])
    print(_table(rows, columns))
    print(f"{len(rows)} of {len(catalog.models)} models; '-' = not reported by any cited source")
    return 0


def _fit(args: argparse.Namespace) -> int:
    catalog = _catalog(None)
    ids = args.model or list(catalog.models)
    unknown = [i for i in ids if i not in catalog.models]
    if unknown:
        print(f"hedge: unknown model(s): {', '.join(unknown)} (see hedge models)", file=sys.stderr)
        return 2
    estimates = [
        estimate_fit(
            catalog.models[i],
            quantization=args.quant,
            gpu_memory_gb=args.gpu_mem,
            gpu_count=args.gpus,
            context_tokens=args.context,
        )
        for i in ids
    ]
    if args.json:
        print(
            orjson.dumps(
                [dataclasses.asdict(e) for e in estimates], option=orjson.OPT_INDENT_2
            ).decode()
        )
        return 0
    for e in estimates:
        print(f"{e.model_id}: {e.status}")
        for line in e.lines:
            print(f"    {line}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from hedge import doctor
    from hedge.provenance import all_provenance

    settings = config.load(config.find_config(args.config))
    result = doctor.audit(settings.config, all_provenance(settings.config, settings.catalog))
    if args.json:
        print(orjson.dumps(dataclasses.asdict(result), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"hedge doctor: {settings.source}")
        print(doctor.render(result))
    return 1 if result.failing else 0


def since_epoch(text: str | None, now: float) -> float | None:
    """'24h', '7d', '30m', '90s' back from now, or an absolute Unix time."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"hedge: --since {text!r}: use 24h, 7d, 30m or a Unix time") from None


def strongest_prices(cfg: config.HedgeConfig, route: str) -> tuple[str, config.Prices] | None:
    """The route's strongest stage (its last, first deployment) and its prices."""
    spec = cfg.routes.get(route)
    if spec is None or spec.cascade is None:
        return None
    name = spec.cascade.stages[-1].deployments[0]
    return name, cfg.deployments[name].prices


async def _costs(args: argparse.Namespace) -> int:
    import time

    from hedge.ledger import open_ledger, render_costs

    settings = config.load(config.find_config(args.config))
    ledger = open_ledger(settings.config.ledger, settings.ledger_dsn)
    await ledger.start()
    try:
        rows = await ledger.summary(since_epoch(args.since, time.time()), args.route, args.by)
    finally:
        await ledger.aclose()
    for row in rows:
        strongest = strongest_prices(settings.config, row["name"]) if args.by == "route" else None
        if strongest is not None:
            # An estimate: the same answers' tokens, priced at the strongest stage.
            name, p = strongest
            all_strong = (
                row["answer_prompt_tokens"] * p.input + row["answer_completion_tokens"] * p.output
            ) / 1e6
            row["all_to_strongest"] = name
            row["saving_vs_strongest_usd"] = all_strong - row["spend_usd"]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(render_costs(rows))
    for row in rows:
        if "saving_vs_strongest_usd" in row:
            print(
                f"{row['name']}: ${row['saving_vs_strongest_usd']:.6f} saved against sending "
                f"every request to {row['all_to_strongest']} (estimate: same tokens, its prices)"
            )
    return 0


async def _drill(args: argparse.Namespace) -> int:
    settings = config.load(config.find_config(args.config))
    server = settings.config.server
    url = (args.url or f"http://{server.host}:{server.port}").rstrip("/")
    name, action = (args.revoke, "revoke") if args.revoke else (args.restore, "restore")
    headers = {}
    if (key := settings.secrets.get(config.ADMIN_SECRET)) is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"reason": args.reason} if args.reason else {}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/admin/deployments/{name}/{action}", json=body, headers=headers
            ) as resp,
        ):
            payload = await resp.json(content_type=None)
    except aiohttp.ClientConnectionError:
        print(f"hedge: no gateway answers at {url}", file=sys.stderr)
        return 1
    if resp.status != 200:
        print(f"hedge: {resp.status}: {payload['error']['message']}", file=sys.stderr)
        return 1
    print(f"{name}: {payload['state']} (breaker {payload['breaker']})")
    return 0


def _config_check(path: str) -> int:
    settings = config.load(path)
    cfg = settings.config
    print(f"{path}: OK")
    print(f"  deployments: {len(cfg.deployments)} ({', '.join(cfg.deployments)})")
    for name, route in cfg.routes.items():
        print(f"  route {name}: {' -> '.join(route.deployments)}")
    for warning in settings.warnings:
        print(f"  warning: {warning}")
    return 0


async def _chat(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": True,
    }
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    settings = config.load(config.find_config(args.config))
    if not args.local:
        url = args.url or f"http://{settings.config.server.host}:{settings.config.server.port}"
        try:
            return await _chat_remote(url.rstrip("/"), body)
        except aiohttp.ClientConnectionError:
            if args.url:
                print(f"hedge: no gateway answers at {url}", file=sys.stderr)
                return 1
            print(f"hedge: no gateway at {url}; running in-process", file=sys.stderr)
    return await _chat_local(settings, body)


async def _chat_remote(url: str, body: dict[str, object]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body) as resp,
    ):
        if resp.status != 200:
            payload = await resp.json(content_type=None)
            print(f"hedge: {resp.status}: {payload['error']['message']}", file=sys.stderr)
            return 1
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                print(f"\nhedge: stream failed: {event['error']['message']}", file=sys.stderr)
                return 1
            for choice in event.get("choices", ()):
                sys.stdout.write(choice["delta"].get("content") or "")
                sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


async def _chat_local(settings: config.Settings, body: dict[str, object]) -> int:
    from hedge.gateway import Gateway
    from hedge.trace import Trace
    from hedge.types import ChatRequest

    gateway = Gateway.from_settings(settings)
    await gateway.start(wait=True)
    try:
        request = ChatRequest.model_validate(body)
        async for chunk in await gateway.stream(request, Trace(route=request.model)):
            sys.stdout.write(chunk.content or "")
            sys.stdout.flush()
    except HedgeError as e:
        print(f"\nhedge: {e.message}", file=sys.stderr)
        return 1
    finally:
        await gateway.aclose()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
