"""Draw a Grafana dashboard of ops/grafana/ as a PNG, from its own queries evaluated by a real Prometheus.

No Grafana is needed: every panel's PromQL (``$__rate_interval`` replaced by ``--rate-interval``) is sent to
Prometheus's ``query_range`` API and drawn where the panel's ``gridPos`` puts it (time series as lines, stat
panels as their last values). Used for ``docs/dashboard.png``:

    prometheus --config.file=ops/prometheus-local.yml --storage.tsdb.path=.data/prometheus-tsdb &
    ./oms up --detach; ./oms decision ... (some traffic); sleep 300
    python -m tools.dashboard_picture --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboard.png

``serve-rabbitmq`` stands in for RabbitMQ's rabbitmq_prometheus plugin where it is not enabled (the local
server of ``./oms infra`` enables only the management plugin): it serves ``rabbitmq_queue_messages_ready``
and ``rabbitmq_queue_messages_unacked`` per queue, read from the management API, on 127.0.0.1:15692.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common.settings import REPO_ROOT

DASHBOARD = REPO_ROOT / "ops" / "grafana" / "dashboards" / "oms-overview.json"
ROW_HEIGHT_INCHES = 0.42  # one gridPos unit of height
WIDTH_INCHES = 22.0


def _get_json(url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0) -> Any:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    # Only http(s) gets here (checked above): file: and custom schemes are refused (B310).
    with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec B310
        return json.loads(response.read())


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """The series a PromQL expression gives over [start, end]."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    answer = _get_json(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}")
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer}")
    return list(answer["data"]["result"])


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    text = fmt or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return text or "value"


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def _format_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.1f} s"
    if unit in ("ops", "reqps"):
        return f"{value:.2f}/s"
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def draw(dashboard_path: Path, prometheus: str, minutes: float, rate_interval: str, out: Path, note: str) -> None:
    """Evaluate every panel's queries over the last ``minutes`` and draw the dashboard to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(dashboard_path.read_text())
    panels = _panels(dashboard["panels"])
    end = time.time()
    start = end - minutes * 60
    step = max(minutes * 60 / 240, 5.0)
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(WIDTH_INCHES, height_units * ROW_HEIGHT_INCHES + 1.2), facecolor="#111217")
    top = 1 - 0.9 / (height_units * ROW_HEIGHT_INCHES + 1.2)

    def box(grid: dict[str, int]) -> tuple[float, float, float, float]:
        left = grid["x"] / 24 + 0.004
        width = grid["w"] / 24 - 0.008
        bottom = top - (grid["y"] + grid["h"]) / height_units * top
        height = grid["h"] / height_units * top
        return (left + 0.03 * width, bottom + 0.12 * height, width * 0.68, height * 0.72)

    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.text(
        0.01,
        0.995,
        f"{dashboard['title']}  ·  last {minutes:g} min to {stamp}",
        color="white",
        fontsize=16,
        va="top",
        weight="bold",
    )
    fig.text(0.01, 0.995 - 0.32 / (height_units * ROW_HEIGHT_INCHES + 1.2), note, color="#9fa7b3", fontsize=9, va="top")
    for panel in panels:
        grid = panel["gridPos"]
        if panel["type"] == "row":
            y = top - grid["y"] / height_units * top
            fig.text(0.005, y - 0.004, panel["title"], color="#ccccdc", fontsize=13, weight="bold", va="top")
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for result in query_range(prometheus, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
        ax = fig.add_axes(box(grid), facecolor="#181b1f")
        ax.set_title(panel["title"], color="white", fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=7)
        if not any(points for _, points in series):
            ax.text(0.5, 0.5, "No data", color="#9fa7b3", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
            shown = [(name, points[-1][1]) for name, points in series if points][:12]
            columns = min(len(shown), 6)
            for i, (name, value) in enumerate(shown):
                color = "#73bf69"
                for threshold in steps:
                    if threshold["value"] is None or value >= threshold["value"]:
                        color = {"green": "#73bf69", "red": "#f2495c"}.get(threshold["color"], threshold["color"])
                col, row = i % columns, i // columns
                x = (col + 0.5) / columns
                y = 0.72 - row * 0.42
                ax.text(
                    x,
                    y,
                    _format_value(value, unit),
                    color=color,
                    fontsize=15,
                    weight="bold",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.text(x, y - 0.2, name, color="#ccccdc", fontsize=7, ha="center", va="center", transform=ax.transAxes)
            continue
        lines = []
        for name, points in series:
            if not points:
                continue
            times = mdates.date2num([datetime.fromtimestamp(t, UTC) for t, _ in points])
            last = points[-1][1]
            (plotted,) = ax.plot(times, [v for _, v in points], linewidth=1.2)
            lines.append((plotted, f"{name}  {_format_value(last, unit)}"))
        ax.xaxis_date(tz=UTC)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
        ax.grid(color="#2c3235", linewidth=0.5)
        if unit == "s":
            ax.set_ylabel("seconds", color="#9fa7b3", fontsize=7)
        legend_box = ax.legend(
            [plotted for plotted, _ in lines][:14],
            [label for _, label in lines][:14],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=6.5,
            frameon=False,
            labelcolor="#ccccdc",
        )
        legend_box.set_in_layout(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    plt.close(fig)


# ---- a stand-in for the rabbitmq_prometheus plugin ------------------------------------------------------------


def rabbitmq_exposition(management: str, user: str, password: str) -> str:
    """Queue depths from the management API, in the names and labels of rabbitmq_prometheus's per-object metrics."""
    queues = _get_json(f"{management.rstrip('/')}/api/queues", (user, password))
    lines = [
        "# TYPE rabbitmq_queue_messages_ready gauge",
        "# TYPE rabbitmq_queue_messages_unacked gauge",
        "# TYPE rabbitmq_queue_messages gauge",
    ]
    for queue in queues:
        labels = f'queue="{queue["name"]}",vhost="{queue["vhost"]}"'
        ready = queue.get("messages_ready", 0) or 0
        unacked = queue.get("messages_unacknowledged", 0) or 0
        lines.append(f"rabbitmq_queue_messages_ready{{{labels}}} {ready}")
        lines.append(f"rabbitmq_queue_messages_unacked{{{labels}}} {unacked}")
        lines.append(f"rabbitmq_queue_messages{{{labels}}} {ready + unacked}")
    return "\n".join(lines) + "\n"


def serve_rabbitmq(port: int, management: str, user: str, password: str) -> None:
    """Serve ``rabbitmq_exposition`` on /metrics and /metrics/per-object until interrupted."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/metrics/per-object"):
                self.send_error(404)
                return
            body = rabbitmq_exposition(management, user, password).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dashboard_picture", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    drawing = sub.add_parser("draw", help="draw the dashboard (the default)")
    for p in (parser, drawing):
        p.add_argument("--dashboard", type=Path, default=DASHBOARD)
        p.add_argument("--prometheus", default="http://127.0.0.1:9090")
        p.add_argument("--minutes", type=float, default=15.0)
        p.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
        p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "dashboard.png")
        p.add_argument("--note", default="Drawn by tools/dashboard_picture.py from the dashboard's own PromQL.")
    standin = sub.add_parser("serve-rabbitmq", help="serve queue depths from the management API on :15692")
    standin.add_argument("--port", type=int, default=15692)
    standin.add_argument("--management", default="http://127.0.0.1:15679")
    standin.add_argument("--user", default="guest")
    standin.add_argument("--password", default="guest")
    args = parser.parse_args(argv)
    if args.command == "serve-rabbitmq":
        serve_rabbitmq(args.port, args.management, args.user, args.password)
        return 0
    draw(args.dashboard, args.prometheus, args.minutes, args.rate_interval, args.out, args.note)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
