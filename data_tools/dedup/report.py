"""report.html: a page a person opens to audit the threshold — each matched pair side by
side (thumbnails embedded, so the page is one self-contained file), sorted by score, then
the closest non-matches just below the threshold."""
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

from data_tools import atomic, shards
from data_tools.dedup import views

THUMB_SIDE = 160


def thumbnails(wanted: list[tuple[Path, str, str]]) -> dict[tuple[Path, str, str], str]:
    """(shard dir, shard file, key) -> data URI of a small JPEG; reads each shard once."""
    by_shard = defaultdict(set)
    for directory, shard, key in wanted:
        by_shard[(directory, shard)].add(key)
    uris = {}
    for (directory, shard), keys in by_shard.items():
        for key, files in shards.iter_samples(Path(directory) / shard):
            if key in keys:
                uris[(directory, shard, key)] = _data_uri(files.get("jpg", b""))
    return uris


def _data_uri(data: bytes) -> str:
    try:
        im = views.decode(data, THUMB_SIDE)
    except views.Undecodable:
        return ""
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


STYLE = """
body{font-family:sans-serif;margin:16px;background:#fff;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:middle;font-size:13px}
img{display:block;max-width:160px;max-height:160px}.near{background:#f4f4f4}
"""


def write(path: Path, summary: dict, matches: list[dict], near: list[dict], train, sets, cap: int) -> None:
    shown = sorted(matches, key=lambda m: -m["score"])[:cap]
    dirs = {s.name: s.directory for s in sets}
    dirs["self"] = train.directory  # a --self match pairs two training images

    def sources(m: dict) -> tuple[tuple, tuple]:
        return ((train.directory, m["train_shard"], m["train_key"]),
                (dirs[m["against"]], m["eval_shard"], m["eval_key"]))

    pairs = [(m, *sources(m)) for m in shown + near]
    uris = thumbnails([side for _, a, b in pairs for side in (a, b)])
    cal = summary["calibration"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wsl data dedup report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Near-duplicate filter</h1>",
        f"<p>Descriptor <b>{html.escape(summary['descriptor'])}</b>, threshold <b>{summary['threshold']:.4f}</b> "
        f"({html.escape(cal['threshold_source'])}); calibration on {cal['copies']} synthetic copies of the "
        f"against images and {cal['unrelated']} unrelated pairs: precision {cal['precision']}, "
        f"recall {cal['recall']} at this threshold.</p>",
        verify_line(summary.get("verify", {})),
        f"<p>{summary['removed']} of {summary['train']['samples']} training samples removed; "
        f"{summary['train']['undecodable']} training images do not decode. Against: "
        + ", ".join(f"{html.escape(a['name'])} ({a['num_samples']} images, {a['matched_train_samples']} matched)"
                    for a in summary["against"]) + ".</p>",
    ]
    parts.append(most_matched_line(summary.get("most_matched", [])))
    if len(matches) > len(shown):
        parts.append(f"<p><b>Showing the {len(shown)} highest-scoring of {len(matches)} matches</b> "
                     "(report_pairs caps the page); matches.jsonl lists all.</p>")
    parts.append(_table("Matches (removed), by score", pairs[:len(shown)], uris, ""))
    decides = summary["verify"]["threshold"] if summary.get("verify", {}).get("enabled") else summary["threshold"]
    parts.append(_table(f"Closest non-matches (below {decides:.4f}, kept)", pairs[len(shown):],
                        uris, "near"))
    parts.append("</body></html>")
    with atomic.replacing(path) as f:
        f.write("\n".join(parts))


def _table(title: str, rows: list[tuple], uris: dict, css: str) -> str:
    out = [f"<h2>{html.escape(title)}</h2>"]
    if not rows:
        return out[0] + "<p>none</p>"
    out.append(f"<table class='{css}'><tr><th>score</th><th>training image</th><th>evaluation image</th>"
               "<th>sources</th></tr>")
    for m, train_side, eval_side in rows:
        out.append(
            f"<tr><td>{m['score']:.4f}{_descriptor_score(m)}</td><td>{_img(uris.get(train_side, ''))}</td>"
            f"<td>{_img(uris.get(eval_side, ''))}</td>"
            f"<td>train: {html.escape(m['train_shard'])} / {html.escape(m['train_key'])}<br>"
            f"{html.escape(m['train_path'])}<br>{html.escape(m['against'])}: {html.escape(m['eval_key'])}<br>"
            f"{html.escape(m['eval_path'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _descriptor_score(m: dict) -> str:
    """With the alignment check, the descriptor's score under the aligned one."""
    return f"<br><small>descriptor {m['descriptor_score']:.4f}</small>" if "descriptor_score" in m else ""


def _img(uri: str) -> str:
    return f"<img src='{uri}' alt=''>" if uri else "<i>does not decode</i>"


def verify_line(verify: dict) -> str:
    if not verify.get("enabled"):
        return "<p>Alignment check off: the descriptor's score decides.</p>"
    return (f"<p>Alignment check on: the {verify['pairs_aligned']} pairs with a descriptor score of at least "
            f"{verify['candidates']:.2f} were aligned (scales, positions, mirror), and an aligned score of at "
            f"least <b>{verify['threshold']:.2f}</b> makes a match; the scores below are aligned scores.</p>")


def most_matched_line(items: list[dict]) -> str:
    if not items:
        return ""
    listed = "; ".join(f"{html.escape(i['against'])}: {html.escape(i['eval_path'] or i['eval_key'])} "
                       f"({i['matches']} training images)" for i in items)
    return (f"<p><b>Evaluation images matched by several training images</b> (a photo re-posted many times, "
            f"or a layout plain enough for look-alikes to reach the threshold: worth a look): {listed}.</p>")
