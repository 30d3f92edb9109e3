"""`just paper`: a paper's full text into 0_docs/papers/, from a PDF this test writes, served on the loopback
interface as arXiv would serve it. No test touches the network."""

import http.server
import threading
from pathlib import Path

import pytest

from conftest import just

OAI_RECORD = """<?xml version="1.0" encoding="UTF-8"?>
<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><GetRecord><record><metadata>
<arXiv xmlns="http://arxiv.org/OAI/arXiv/"><id>2106.09685</id>
<authors><author><keyname>Hu</keyname><forenames>Edward J.</forenames></author>
<author><keyname>Shen</keyname><forenames>Yelong</forenames></author></authors>
<title>LoRA: Low-Rank Adaptation of
  Large Language Models</title><license>http://creativecommons.org/licenses/by/4.0/</license>
</arXiv></metadata></record></GetRecord></OAI-PMH>"""


def pdf(pages: list[str], title: str = "") -> bytes:
    """A small valid PDF with one line of Helvetica text per page (offsets and xref computed)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objects.append(f"<< /Title ({title}) >>")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture
def arxiv():
    """arXiv's OAI-PMH record and PDF of 2106.09685, served on 127.0.0.1."""
    files = {"/oai2": OAI_RECORD.encode(), "/pdf/2106.09685": pdf(["We propose LoRA.", "Results on GPT-3."])}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.split("?", 1)[0])
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"RESEARCH_ARXIV_URL": f"http://127.0.0.1:{server.server_port}"}
    server.shutdown()


def test_an_arxiv_paper_is_saved_in_full_with_title_authors_id_and_licence(project, arxiv):
    result = just(project, "paper", "https://arxiv.org/abs/2106.09685v2", env=arxiv)
    assert result.returncode == 0, result.stderr
    path = project / "0_docs" / "papers" / "lora-low-rank-adaptation-of-large.md"
    text = path.read_text()
    assert text.startswith("# LoRA: Low-Rank Adaptation of Large Language Models\n")
    assert (
        "- **Authors:** Edward J. Hu, Yelong Shen" in text
        and "- **arXiv:** 2106.09685 (https://arxiv.org/abs/2106.09685)" in text
    )
    assert "- **Licence:** http://creativecommons.org/licenses/by/4.0/" in text
    assert "We propose LoRA." in text and "<!-- page 2 -->\nResults on GPT-3." in text  # every page, not a summary
    again = just(project, "paper", "2106.09685", env=arxiv)
    assert again.returncode == 2 and "exists: pick another --slug" in again.stderr


def test_a_pdf_file_is_saved_with_its_own_title(project, tmp_path):
    (tmp_path / "notes.pdf").write_bytes(pdf(["Muon orthogonalizes the update."], title="Muon notes"))
    result = just(project, "paper", str(tmp_path / "notes.pdf"), "--slug", "muon")
    assert result.returncode == 0, result.stderr
    text = (project / "0_docs" / "papers" / "muon.md").read_text()
    assert (
        text.startswith("# Muon notes\n") and "- **arXiv:** none" in text and "Muon orthogonalizes the update." in text
    )


def test_no_network_is_one_line_that_says_so(project):
    closed = {"RESEARCH_ARXIV_URL": "http://127.0.0.1:9"}  # the discard port: nothing listens
    result = just(project, "paper", "2106.09685", env=closed)
    assert result.returncode == 2 and "no network here?" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error, and just's own line
    bad = just(project, "paper", "not-a-paper")
    assert bad.returncode == 2 and "is not an arXiv id (2106.09685), a URL or a PDF file" in bad.stderr
    assert not list(Path(project, "0_docs", "papers").glob("*.md"))
