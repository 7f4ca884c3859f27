"""report.html: a page a person opens to audit the threshold — each matched pair side by
side (thumbnails embedded, so the page is one self-contained file), sorted by score, then
the closest non-matches just below the threshold."""
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

from data_tools.common import atomic
from data_tools.dedup import keypoints, views
from data_tools.format import shards

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
    dirs["self"] = dirs["chain"] = train.directory  # a --self or chain match pairs two training images

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
        f"({html.escape(cal['threshold_source'])}{_threshold_use(summary)}); calibration on {cal['copies']} "
        f"synthetic copies of the against images and {cal['unrelated']} unrelated pairs: precision {cal['precision']}, "
        f"recall {cal['recall']} at this threshold.</p>",
        verify_line(summary["verify"]),
        f"<p>{summary['removed']} of {summary['train']['samples']} training samples removed; "
        f"{summary['train']['undecodable']} training images do not decode{_chains(summary)}. Against: "
        + ", ".join(f"{html.escape(a['name'])} ({a['num_samples']} images, {a['matched_train_samples']} matched)"
                    for a in summary["against"]) + ".</p>",
    ]
    parts.append(most_matched_line(summary.get("most_matched", [])))
    if len(matches) > len(shown):
        parts.append(f"<p><b>Showing the {len(shown)} highest-scoring of {len(matches)} matches</b> "
                     "(report_pairs caps the page); matches.jsonl lists all.</p>")
    parts.append(_table("Matches (removed), by score", pairs[:len(shown)], uris, ""))
    method = summary["verify"]["method"]
    if method == "local":
        below = "verification failed or not reached"
    else:
        below = f"below {summary['verify']['threshold'] if method == 'align' else summary['threshold']:.4f}"
    parts.append(_table(f"Closest non-matches ({below}, kept)", pairs[len(shown):], uris, "near"))
    parts.append("</body></html>")
    with atomic.replacing(path) as f:
        f.write("\n".join(parts))


def _table(title: str, rows: list[tuple], uris: dict, css: str) -> str:
    out = [f"<h2>{html.escape(title)}</h2>"]
    if not rows:
        return out[0] + "<p>none</p>"
    out.append(f"<table class='{css}'><tr><th>score</th><th>training image</th><th>evaluation image</th>"
               "<th>sources</th><th>matched keypoints</th></tr>")
    for m, train_side, eval_side in rows:
        out.append(
            f"<tr><td>{m['score']:.4f}{_descriptor_score(m)}</td><td>{_img(uris.get(train_side, ''))}</td>"
            f"<td>{_img(uris.get(eval_side, ''))}</td>"
            f"<td>train: {html.escape(m['train_shard'])} / {html.escape(m['train_key'])}<br>"
            f"{html.escape(m['train_path'])}<br>{html.escape(m['against'])}: {html.escape(m['eval_key'])}<br>"
            f"{html.escape(m['eval_path'])}</td><td>{_lines(m, uris.get(eval_side, ''), uris.get(train_side, ''))}"
            "</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _threshold_use(summary: dict) -> str:
    """With a second look on, the descriptor's threshold decides only --self's links."""
    if summary["verify"]["method"] == "off":
        return ""
    return "; it links --self near-duplicates, while the second look below decides matches to the against sets"


def _chains(summary: dict) -> str:
    own = summary.get("self", {})
    if not own.get("components"):
        return ""
    return (f"; {own['removed_through_chains']} removed through near-duplicate chains (components=true: "
            "each is in a component of training images that holds a copy of an evaluation image)")


def _descriptor_score(m: dict) -> str:
    """With the alignment check, the descriptor's score under the aligned one; with
    local-feature verification, what decided."""
    if "descriptor_score" in m:
        return f"<br><small>descriptor {m['descriptor_score']:.4f}</small>"
    if "inliers" in m:
        return f"<br><small>{m['inliers']} inliers, {m['cover']:.0%} of the evaluation image</small>"
    if m.get("decided") == "descriptor":
        return "<br><small>descriptor alone (certain)</small>"
    return ""


LINE_COLOUR = "#00ff00"
GAP = 20   # pixels between the two images of a keypoint figure


def _lines(m: dict, eval_uri: str, train_uri: str) -> str:
    """The evaluation image (left) and the training image (right) with each inlier pair
    of keypoints joined by a line: why local-feature verification matched them. Both
    thumbnails have THUMB_SIDE as their longer side, the keypoints keypoints.SIDE."""
    if not m.get("lines") or not eval_uri or not train_uri:
        return ""
    scale, right = THUMB_SIDE / keypoints.SIDE, THUMB_SIDE + GAP
    lines = "".join(f"<line x1='{ex * scale:.1f}' y1='{ey * scale:.1f}' x2='{right + tx * scale:.1f}' "
                    f"y2='{ty * scale:.1f}'/>" for ex, ey, tx, ty in m["lines"])
    return (f"<svg width='{2 * THUMB_SIDE + GAP}' height='{THUMB_SIDE}'>"
            f"<image href='{eval_uri}' width='{THUMB_SIDE}' height='{THUMB_SIDE}' preserveAspectRatio='xMinYMin meet'/>"
            f"<image href='{train_uri}' x='{right}' width='{THUMB_SIDE}' height='{THUMB_SIDE}' "
            f"preserveAspectRatio='xMinYMin meet'/><g stroke='{LINE_COLOUR}' stroke-width='1.5'>{lines}</g></svg>")


def _img(uri: str) -> str:
    return f"<img src='{uri}' alt=''>" if uri else "<i>does not decode</i>"


def verify_line(verify: dict) -> str:
    if verify["method"] == "off":
        return "<p>Second look off (verify.method=off): the descriptor's score decides.</p>"
    if verify["method"] == "local":
        return (f"<p>Local-feature verification on: each training image's {verify['shortlist']} closest "
                f"evaluation images from a descriptor score of {verify['floor']:.2f} were verified "
                f"({verify['pairs_aligned']} pairs; SIFT, ratio test, RANSAC affine fit); a pair with at least "
                f"<b>{verify['min_inliers']}</b> inliers spanning {verify['min_cover']:.0%} of the evaluation "
                f"image is a match, and so is one with a descriptor score from {verify['certain']:.2f}. "
                "Green lines join the matched keypoints.</p>")
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
