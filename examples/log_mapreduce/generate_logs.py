"""Write realistic, reproducible web-server access logs (Combined Log Format) for the example.

    python examples/log_mapreduce/generate_logs.py OUT_DIR [--files 3] [--lines 80] [--seed 7]

Files are named like a rotated nginx log (access.log, access.log.1, ...); `--gzip` compresses
the rotated ones (access.log.1.gz, ...). A few malformed lines are mixed in, as real logs have.
The committed `sample_logs/` folder was made with the defaults.
"""

from __future__ import annotations

import argparse
import gzip
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

CLIENTS = [
    ("203.0.113.7", 30),
    ("198.51.100.23", 18),
    ("192.0.2.44", 12),
    ("203.0.113.80", 8),
    ("198.51.100.5", 6),
    ("192.0.2.150", 4),
    ("2001:db8::1f", 3),
    ("203.0.113.201", 2),
]
PAGES = [
    ("GET", "/", 25, 5316),
    ("GET", "/index.html", 10, 5316),
    ("GET", "/static/app.js", 15, 48213),
    ("GET", "/static/style.css", 12, 9120),
    ("GET", "/api/items", 14, 1830),
    ("GET", "/api/items?page=2", 6, 1790),
    ("POST", "/api/orders", 5, 112),
    ("GET", "/search?q=spider", 4, 3320),
    ("GET", "/favicon.ico", 6, 1150),
    ("GET", "/wp-login.php", 3, 162),
]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
]
MALFORMED = [
    '\\x16\\x03\\x01\\x00\\xa5\\x01\\x00\\x00\\xa1\\x03\\x03 "-" 400',
    "203.0.113.7 - - [truncated",
    '198.51.100.23 - - [12/Mar/2025:06:25:24 +0000] "-" 408 0 "-" "-"',
]


def status_for(rng: random.Random, method: str, path: str) -> tuple[int, bool]:
    """(status, whether a body is sent)."""
    if path == "/wp-login.php":
        return 404, True
    if path.startswith("/static/") and rng.random() < 0.3:
        return 304, False
    roll = rng.random()
    if roll < 0.04:
        return 500, True
    if roll < 0.08:
        return 404, True
    if method == "POST":
        return 201, True
    if path == "/" and roll < 0.15:
        return 301, True
    return 200, True


def log_lines(rng: random.Random, start: datetime, count: int) -> list[str]:
    ips, ip_weights = zip(*CLIENTS, strict=True)
    lines = []
    when = start
    for _ in range(count):
        when += timedelta(seconds=rng.randint(1, 40))
        ip = rng.choices(ips, ip_weights)[0]
        method, path, _, size = rng.choices(PAGES, [p[2] for p in PAGES])[0]
        status, has_body = status_for(rng, method, path)
        if status == 301:
            size = 178
        elif status in (404, 500):
            size = 153
        body = str(size + rng.randint(-20, 20) if size > 200 else size) if has_body else "-"
        stamp = when.strftime("%d/%b/%Y:%H:%M:%S +0000")
        referer = rng.choice(['"-"', '"https://example.com/"'])
        agent = rng.choice(AGENTS)
        lines.append(
            f'{ip} - - [{stamp}] "{method} {path} HTTP/1.1" {status} {body} {referer} "{agent}"'
        )
    for bad in rng.sample(MALFORMED, k=rng.randint(0, 2)):
        lines.insert(rng.randrange(len(lines)), bad)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--lines", type=int, default=80, help="requests per file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gzip", action="store_true", help="compress the rotated files")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    day = datetime(2025, 3, 12, tzinfo=UTC)
    for i in range(args.files):
        # access.log is today's file, access.log.1 yesterday's, ...
        text = "\n".join(log_lines(rng, day - timedelta(days=i), args.lines)) + "\n"
        name = "access.log" if i == 0 else f"access.log.{i}"
        if i and args.gzip:
            with gzip.open(args.out_dir / f"{name}.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (args.out_dir / name).write_text(text, encoding="utf-8")
    print(f"wrote {args.files} log files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
