"""The official openai SDK's Responses API and the official anthropic SDK as test peers: the same calls directly
against the simulator and through the proxy must give the same text and usage. Prints one JSON object; exits
non-zero on a mismatch."""
import json
import sys

from anthropic import Anthropic
from openai import OpenAI

MODELS = ("deepseek-v4-pro", "deepseek-v4-flash")
PROMPT = "你是谁"


def responses(base_url: str) -> dict:
    client = OpenAI(api_key="sk-sdk-peer-0043", base_url=base_url + "/compatible-mode/v1", max_retries=0, timeout=30)
    out = {}
    for model in MODELS:
        r = client.responses.create(model=model, input=PROMPT)
        u = r.usage
        out[f"responses/{model}/plain"] = {
            "text": r.output_text,
            "usage": [u.input_tokens, u.output_tokens, u.output_tokens_details.reasoning_tokens],
        }
        text, reasoning, usage, kinds = "", "", None, []
        for event in client.responses.create(model=model, input=PROMPT, stream=True):
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.reasoning_text.delta":
                reasoning += event.delta
            elif event.type == "response.completed":
                u = event.response.usage
                usage = [u.input_tokens, u.output_tokens, u.output_tokens_details.reasoning_tokens]
        out[f"responses/{model}/stream"] = {
            "text": text,
            "reasoning": reasoning,
            "usage": usage,
            "first": kinds[0],
            "last": kinds[-1],
        }
    return out


def anthropic(base_url: str) -> dict:
    client = Anthropic(api_key="sk-sdk-peer-0044", base_url=base_url + "/apps/anthropic", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": PROMPT}]
    out = {}
    for model in MODELS:
        m = client.messages.create(model=model, max_tokens=4096, messages=messages)
        out[f"anthropic/{model}/plain"] = {
            "thinking": "".join(b.thinking for b in m.content if b.type == "thinking"),
            "text": "".join(b.text for b in m.content if b.type == "text"),
            "usage": [m.usage.input_tokens, m.usage.output_tokens],
        }
        with client.messages.stream(model=model, max_tokens=4096, messages=messages) as stream:
            for _ in stream:
                pass
            final = stream.get_final_message()
        out[f"anthropic/{model}/stream"] = {
            "thinking": "".join(b.thinking for b in final.content if b.type == "thinking"),
            "text": "".join(b.text for b in final.content if b.type == "text"),
            "usage": [final.usage.input_tokens, final.usage.output_tokens],
            "stop_reason": final.stop_reason,
        }
    return out


def run(base_url: str) -> dict:
    return {**responses(base_url), **anthropic(base_url)}


def main() -> int:
    direct, proxied = run(sys.argv[1]), run(sys.argv[2])
    print(json.dumps({"direct": direct, "proxied": proxied}, ensure_ascii=False))
    return 0 if direct == proxied else 1


if __name__ == "__main__":
    sys.exit(main())
