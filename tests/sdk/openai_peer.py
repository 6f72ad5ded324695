"""The official openai SDK as a test peer: the same calls directly against the simulator and through the
proxy must give the same reasoning and answer text. Prints one JSON object; exits non-zero on mismatch."""
import json
import sys

from openai import OpenAI


def run(base_url: str) -> dict:
    client = OpenAI(api_key="sk-sdk-peer-0042", base_url=base_url + "/compatible-mode/v1", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "你是谁"}]
    out = {}
    for model in ("deepseek-v3.2-exp", "deepseek-r1", "deepseek-v3"):
        c = client.chat.completions.create(model=model, messages=messages, extra_body={"enable_thinking": True})
        m = c.choices[0].message
        out[f"{model}/plain"] = {
            "reasoning": getattr(m, "reasoning_content", None) or "",
            "answer": m.content,
            "usage": [c.usage.prompt_tokens, c.usage.completion_tokens],
        }
        for include_usage in (False, True):
            kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
            reasoning, answer, usage, usage_chunks = "", "", None, 0
            for chunk in client.chat.completions.create(
                model=model, messages=messages, stream=True, extra_body={"enable_thinking": True}, **kwargs
            ):
                if not chunk.choices:
                    usage_chunks += 1
                    usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
                    continue
                d = chunk.choices[0].delta
                reasoning += getattr(d, "reasoning_content", None) or ""
                answer += d.content or ""
            out[f"{model}/stream/include_usage={include_usage}"] = {
                "reasoning": reasoning,
                "answer": answer,
                "usage": usage,
                "usage_chunks": usage_chunks,
            }
    return out


def main() -> int:
    direct, proxied = run(sys.argv[1]), run(sys.argv[2])
    print(json.dumps({"direct": direct, "proxied": proxied}, ensure_ascii=False))
    return 0 if direct == proxied else 1


if __name__ == "__main__":
    sys.exit(main())
