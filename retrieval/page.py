"""The page `GET /` shows: a user's recent items and recommendations, or an item's similar items,
as tiles (the item's image where the dataset has one, else its title), rendered on the server
as plain HTML with its style inline: no script, nothing fetched from elsewhere. Every tile links
to that item's similar items."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, urlencode

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .4em}h2{font-size:1.05em;margin:1.2em 0 .5em}
form{margin:.6em 0}input{font-size:1em;padding:.25em;width:14em}button{font-size:1em}
.meta{color:#666;font-size:.85em}.error{color:#a00}.source{font-weight:bold}
.tiles{display:flex;flex-wrap:wrap;gap:.7em}
.tile{width:130px;text-decoration:none;color:inherit;background:#fff;border:1px solid #ddd;
border-radius:4px;padding:4px}
.tile img,.tile .text{width:120px;height:180px;object-fit:cover;display:block;margin:auto}
.tile .text{display:flex;align-items:center;justify-content:center;text-align:center;
background:#e4e4e4;font-size:.9em;overflow:hidden}
.title{font-size:.8em;margin-top:3px;overflow:hidden;max-height:3.6em}
.score{font-size:.75em;color:#666}
"""


@dataclass
class Tile:
    """One item as the page shows it."""

    item_id: int | str
    title: str
    has_image: bool
    rank: int | None = None
    note: str = ""  # what the answer says of it: its chance, similarity or popularity


@dataclass
class View:
    """What one page shows: the sections of tiles, under a heading and the serving bundle."""

    heading: str
    versions: dict[str, str | None]
    user: str = ""
    sections: list[tuple[str, list[Tile]]] = field(default_factory=list)
    source: str | None = None
    error: str | None = None
    examples: Sequence[int | str] = ()


def tiles(items: Sequence[dict], image_of: Callable[[int | str], object | None],
          ranked: bool = True) -> list[Tile]:  # fmt: skip
    """Tiles of answer items (`item_id`, `title`, `score`), ranked 1.. in their order;
    `image_of(item_id)`: the item's image, None where it has none."""
    return [
        Tile(it["item_id"], it["title"] or str(it["item_id"]), image_of(it["item_id"]) is not None,
             rank if ranked else None, _note(it) if ranked else "")
        for rank, it in enumerate(items, 1)
    ]  # fmt: skip


def _note(item: dict) -> str:
    """The number the answer is ordered by, named (`retrieval.api.Item` says what each is)."""
    if item.get("score") is not None:
        return f"chance {item['score']:.2f}"
    if item.get("retrieval_score") is not None:
        return f"similarity {item['retrieval_score']:.2f}"
    if item.get("popularity") is not None:
        return f"{item['popularity']:,} interactions"
    return ""


def render(view: View) -> str:
    """The whole page as HTML text."""
    parts = [f"<h1>{escape(view.heading)}</h1>", _form(view)]
    if view.error:
        parts.append(f'<p class="error" role="alert">{escape(view.error)}</p>')
    if view.source:
        parts.append(f'<p>answer: <span class="source" id="source">{escape(view.source)}</span>'
                     "</p>")  # fmt: skip
    for title, shown in view.sections:
        parts.append(f"<h2>{escape(title)}</h2>")
        parts.append(_tiles(shown) if shown else '<p class="meta">none</p>')
    versions = ", ".join(f"{name} {value or 'none'}" for name, value in view.versions.items())
    parts.append(f'<p class="meta">bundle: {escape(versions)}</p>')
    body = "\n".join(parts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{escape(view.heading)}</title><style>{STYLE}</style></head><body>{body}"
            "</body></html>")  # fmt: skip


def _form(view: View) -> str:
    examples = " ".join(
        f'<a href="/?{urlencode({"user": u})}">{escape(str(u))}</a>' for u in view.examples
    )
    pick = f' <span class="meta">or pick one: {examples}</span>' if examples else ""
    return ('<form method="get" action="/"><label>user id <input name="user" value="'
            f'{escape(view.user)}" autofocus></label> <button type="submit">recommend</button>'
            f"{pick}</form>")  # fmt: skip


def _tiles(shown: list[Tile]) -> str:
    return '<div class="tiles">' + "".join(_tile(t) for t in shown) + "</div>"


def _tile(t: Tile) -> str:
    ident = quote(str(t.item_id), safe="")
    title = escape(t.title)
    picture = (
        f'<img src="/items/{ident}/image" alt="{title}">'
        if t.has_image
        else f'<div class="text">{title}</div>'
    )
    rank = f"{t.rank}. " if t.rank is not None else ""
    score = f'<div class="score">{escape(t.note)}</div>' if t.note else ""
    return (f'<a class="tile" href="/?{urlencode({"item": t.item_id})}" data-item="'
            f'{escape(str(t.item_id))}">{picture}<div class="title">{rank}{title}</div>{score}'
            "</a>")  # fmt: skip
