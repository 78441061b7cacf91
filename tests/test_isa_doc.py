"""The committed ISA reference matches what isa/gen_doc.py makes from the table."""

from __future__ import annotations

import difflib

from isa import gen_doc


def test_isa_md_is_up_to_date() -> None:
    fresh = gen_doc.render()
    committed = gen_doc.OUTPUT.read_text(encoding="utf-8") if gen_doc.OUTPUT.exists() else ""
    if committed != fresh:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(True),
                fresh.splitlines(True),
                "isa/ISA.md (committed)",
                "isa/ISA.md (fresh)",
            )
        )
        raise AssertionError(f"isa/ISA.md is stale: run `python -m isa.gen_doc`\n{diff[:4000]}")


def test_isa_md_covers_the_table() -> None:
    from isa.table import ALU_OPS, INSTRUCTIONS

    text = gen_doc.render()
    assert text.startswith(gen_doc.BANNER + "\n")
    for row in INSTRUCTIONS:
        assert f"### `{row.mnemonic}`" in text
    for a in ALU_OPS:
        assert f"| `{a.name}` |" in text
