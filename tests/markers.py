"""Image files carrying provenance markers, made on the fly as the tools named write them
(nothing binary is committed): XMP with an IPTC DigitalSourceType, EXIF Software and
UserComment, PNG text chunks of AUTOMATIC1111, ComfyUI, InvokeAI and NovelAI, and C2PA
manifests signed by a certificate authority the test makes with `openssl`."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

from tests.certificates import certificate_authority, issue
from tests.images import _png_chunk, encode, photo

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
A1111 = (
    "a photo of a cat in a hat\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.7.0"
)
COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 8}},
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "sd_xl_base.safetensors"},
    },
}
COMFY_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": []}
INVOKE = {"generation_mode": "txt2img", "positive_prompt": "a cat", "model": {"name": "sd-1.5"}}
NOVELAI_COMMENT = {"prompt": "a cat", "steps": 28, "sampler": "k_euler_ancestral", "seed": 1}


def xmp(source_type: str | None = None, *, form: str = "attribute", tool: str = "") -> bytes:
    """An XMP packet as Adobe tools write it, with `source_type` (an IPTC code's last part)
    in attribute, element or resource form, and an optional xmp:CreatorTool."""
    attrs, body = "", ""
    if source_type is not None:
        uri = IPTC + source_type
        if form == "attribute":
            attrs += f' Iptc4xmpExt:DigitalSourceType="{uri}"'
        elif form == "element":
            body += f"<Iptc4xmpExt:DigitalSourceType>{uri}</Iptc4xmpExt:DigitalSourceType>\n"
        else:
            body += f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{uri}"/>\n'
    if tool:
        attrs += f' xmp:CreatorTool="{tool}"'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{attrs}>\n{body}</rdf:Description>\n'
        '</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


def image_with_xmp(fmt: str, packet: bytes, seed: int = 0) -> bytes:
    """A JPEG (APP1), PNG (iTXt XML:com.adobe.xmp), WebP (XMP chunk) or AVIF (XMP item)."""
    img = photo(96, 96, seed)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode())
        return encode(img, "PNG", pnginfo=info)
    return encode(img, fmt, xmp=packet)


def png_with_text(chunks: dict[str, str], *, compressed: set[str] = frozenset(), seed: int = 0):
    """A PNG with tEXt chunks (zTXt for the keys in `compressed`), as the tools write them."""
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value, zip=key in compressed)
    return encode(photo(96, 96, seed), "PNG", pnginfo=info)


def a1111_png(seed: int = 0) -> bytes:
    return png_with_text({"parameters": A1111}, seed=seed)


def comfyui_png(seed: int = 0) -> bytes:
    return png_with_text(
        {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)}, seed=seed
    )


def invokeai_png(seed: int = 0) -> bytes:
    return png_with_text({"invokeai_metadata": json.dumps(INVOKE)}, seed=seed)


def novelai_png(seed: int = 0) -> bytes:
    return png_with_text(
        {
            "Title": "AI generated image",
            "Description": "a cat",
            "Software": "NovelAI",
            "Source": "NovelAI Diffusion V4 4F6A7A35",
            "Comment": json.dumps(NOVELAI_COMMENT),
        },
        seed=seed,
    )


def exif_image(fmt: str, *, software: str = "", user_comment: str = "", seed: int = 0) -> bytes:
    """A JPEG, WebP or TIFF with EXIF Software and/or UserComment (as AUTOMATIC1111 writes
    its parameters into JPEG and WebP: character code UNICODE, then UTF-16)."""
    exif = Image.Exif()
    if software:
        exif[0x0131] = software
    if user_comment:
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + user_comment.encode("utf-16-be")
    return encode(photo(96, 96, seed), fmt, exif=exif)


def camera_jpeg(seed: int = 0) -> bytes:
    """What a camera and an editor leave: EXIF Make/Model/Software and XMP digitalCapture."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS 5D", "Adobe Photoshop 25.0"
    return encode(photo(96, 96, seed), "JPEG", exif=exif, xmp=xmp("digitalCapture"))


def after_iend(png: bytes, key: bytes = b"parameters", text: bytes = b"Steps: 1, Seed: 2") -> bytes:
    """`png` with a tEXt chunk appended after its IEND: outside the image."""
    return png + _png_chunk(b"tEXt", key + b"\x00" + text)


def tiny_fake_text(png: bytes) -> bytes:
    """A real photo with a 13-byte fake tEXt chunk after its end (the issue's example)."""
    chunk = _png_chunk(b"tEXt", b"Software\x00")[:13]  # cut short: not even a whole chunk
    return png + chunk


def png_with_raw_chunk(png: bytes, ctype: bytes, payload: bytes, *, length: int | None = None):
    """`png` with one chunk after IHDR whose declared length may lie."""
    ihdr_end = 8 + 4 + 4 + 13 + 4
    n = len(payload) if length is None else length
    crc = struct.pack(">I", zlib.crc32(ctype + payload) & 0xFFFFFFFF)
    return png[:ihdr_end] + struct.pack(">I", n) + ctype + payload + crc + png[ihdr_end:]


# ---------------------------------------------------------------- C2PA
def make_ca(folder: Path, name: str) -> dict[str, Path]:
    """A certificate authority and a signing certificate it issued (ES256), with the
    extensions C2PA asks of a signer. Returns the paths: ca, chain (leaf + CA), key."""
    ca = certificate_authority(folder, name)
    leaf, key = issue(
        folder,
        "leaf",
        f"/CN={name} signer/O={name}",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=emailProtection\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    chain = folder / "chain.pem"
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    return {"ca": ca, "chain": chain, "key": key}


def c2pa_signed(
    source: bytes,
    mime: str,
    ca: dict[str, Path],
    *,
    source_type: str = "trainedAlgorithmicMedia",
    generator: str = "dmguard-test-generator",
) -> bytes:
    """`source` with a C2PA manifest: one c2pa.created action with `source_type`, signed
    by `ca`'s signing certificate."""
    import c2pa

    info = c2pa.C2paSignerInfo(
        c2pa.C2paSigningAlg.ES256, ca["chain"].read_bytes(), ca["key"].read_bytes(), None
    )
    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": "image",
        "format": mime,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]
                },
            }
        ],
    }
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(json.dumps(manifest)) as builder:
        builder.sign(signer, mime, io.BytesIO(source), out)
    return out.getvalue()
