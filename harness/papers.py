"""`just paper`: a paper's full text (pypdf, page by page) into 0_docs/papers/{slug}.md, with its title,
authors, arXiv id and licence at the top, for IDEATE."""

import io
import os
import re
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pypdf

from harness import Refusal
from repo.git import check_slug, main_root

ARXIV = os.environ.get("RESEARCH_ARXIV_URL", "https://export.arxiv.org")  # its mirror for programs
ARXIV_ID = re.compile(
    r"(?:https?://(?:export\.)?arxiv\.org/(?:abs|pdf)/|arXiv:)?"
    r"(?P<id>\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?(?:\.pdf)?"
)
OAI = {"oai": "http://www.openarchives.org/OAI/2.0/", "arxiv": "http://arxiv.org/OAI/arXiv/"}


def fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "research-harness (just paper)"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Refusal(
            f"could not fetch {url} ({reason}): no network here? Download the PDF where there is one, then run "
            "just paper PATH.pdf"
        ) from e


def arxiv_metadata(arxiv_id: str) -> dict:
    """Title, authors and licence of an arXiv paper, from arXiv's OAI-PMH record."""
    url = f"{ARXIV}/oai2?verb=GetRecord&identifier=oai:arXiv.org:{arxiv_id}&metadataPrefix=arXiv"
    record = ET.fromstring(fetch(url)).find(".//arxiv:arXiv", OAI)
    if record is None:
        raise Refusal(f"arXiv has no record {arxiv_id!r} ({url})")
    text = lambda tag: " ".join((record.findtext(f"arxiv:{tag}", "", OAI) or "").split())  # noqa: E731
    authors = [
        " ".join(filter(None, (a.findtext("arxiv:forenames", "", OAI), a.findtext("arxiv:keyname", "", OAI))))
        for a in record.iterfind("arxiv:authors/arxiv:author", OAI)
    ]
    return dict(title=text("title"), authors=authors, licence=text("license") or "not stated (arXiv's default licence)")


def pdf_text(data: bytes) -> tuple[str, dict]:
    """The text of every page (pypdf), and the PDF's own title and author, if it has them."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    pages = [page.extract_text() or "" for page in reader.pages]
    meta = reader.metadata or {}
    own = dict(
        title=(meta.get("/Title") or "").strip(), authors=[a for a in [(meta.get("/Author") or "").strip()] if a]
    )
    return "\n\n".join(f"<!-- page {i} -->\n{text.strip()}" for i, text in enumerate(pages, start=1)), own


def paper(source: str, /, slug: str = "") -> None:
    """Save a paper's full text to 0_docs/papers/{SLUG}.md, with its title, authors, arXiv id and licence
    at the top: SOURCE is an arXiv id or URL, another PDF URL, or a PDF file."""
    match = ARXIV_ID.fullmatch(source.strip())
    arxiv_id = match["id"] if match and not Path(source).is_file() else None
    if arxiv_id is not None:
        meta, url = arxiv_metadata(arxiv_id), f"{ARXIV}/pdf/{arxiv_id}"
        data = fetch(url)
    elif source.startswith(("http://", "https://")):
        meta, url, data = {}, source, fetch(source)
    elif Path(source).is_file():
        meta, url, data = {}, str(Path(source).resolve()), Path(source).read_bytes()
    else:
        raise Refusal(f"{source!r} is not an arXiv id (2106.09685), a URL or a PDF file")
    if not data.startswith(b"%PDF"):
        raise Refusal(f"{url} is not a PDF (it starts {data[:20]!r})")
    text, own = pdf_text(data)
    if not text.replace("<!-- page", "").strip(" \n0123456789->"):
        raise Refusal(f"{url}: the PDF has no text layer (a scan?); nothing to save")
    title = meta.get("title") or own["title"] or Path(url).stem
    authors = meta.get("authors") or own["authors"]
    slug = check_slug(slug or "-".join(re.findall(r"[a-z0-9]+", title.lower())[:6]) or "paper")
    root = main_root()
    path = root / "0_docs" / "papers" / f"{slug}.md"
    if path.exists():
        raise Refusal(f"{path.relative_to(root)} exists: pick another --slug")
    header = [
        f"# {title}", "",
        f"- **Authors:** {', '.join(authors) or 'not stated'}",
        f"- **arXiv:** {f'{arxiv_id} (https://arxiv.org/abs/{arxiv_id})' if arxiv_id else 'none'}",
        f"- **Licence:** {meta.get('licence', 'not stated: check the source before quoting it')}",
        f"- **Source:** {url}; full text extracted with pypdf {pypdf.__version__} on {datetime.now():%Y-%m-%d}",
        "", "---", "",
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + text + "\n")
    print(f"paper: {path.relative_to(root)} ({len(text.split()):,} words, {text.count('<!-- page ')} pages)")
