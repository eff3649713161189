"""``onnxsmith verify``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import echo, json_option


@click.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@json_option
def verify_command(bundle_path: str, as_json: bool) -> None:
    """Check that every file of a bundle matches its seal (exit 6 if not).

    Checks manifest.sha256 (and manifest.sig when ONNXSMITH_BUNDLE_KEY is set), records.json likewise, the sha256
    of every file either lists, and that no other file is there: an edited, removed or added file anywhere in the
    bundle (artifact/, reference/, deploy/, serving/, profile.json, report.md...) is a mismatch."""
    from onnxsmith.bundle import verify_bundle
    from onnxsmith.console import print_json, shown
    from onnxsmith.signing import KEY_VARIABLE, signing_key

    signed = signing_key() is not None
    counts = verify_bundle(bundle_path)
    if as_json:
        print_json({"bundle": bundle_path, "ok": True, "signature_checked": signed, **counts})
        return
    echo(f"verified {counts['files']} files of {shown(bundle_path)}: {counts['compiled']} written by compile, "
         f"{counts['records']} records written later; manifest checksum ok, "
         + (f"signature ok ({KEY_VARIABLE})" if signed else f"no signature checked ({KEY_VARIABLE} unset)"))
