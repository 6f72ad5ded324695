//! Captured payloads from the reference (§1.2, §1.3, §2.2, §2.3), verbatim where it is verbatim.

pub const COMPAT_R1_JSON: &str = r#"{
  "choices": [{
    "message": {
      "content": "9.9比9.11大。\n\n**解析：**…",
      "reasoning_content": "\n嗯，用户问的是9.9和9.11谁大。…",
      "role": "assistant"
    },
    "finish_reason": "stop", "index": 0, "logprobs": null
  }],
  "object": "chat.completion",
  "usage": {"prompt_tokens": 19, "completion_tokens": 797, "total_tokens": 816},
  "created": 1739069910, "system_fingerprint": null, "model": "deepseek-r1",
  "id": "chatcmpl-e55cdb8a-9ce1-9662-b87c-cf3da706e4f3"
}"#;

pub const COMPAT_R1_SSE: &str = r#"data: {"choices":[{"delta":{"content":"","reasoning_content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071776,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[{"delta":{"content":"","reasoning_content":"好的"},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071776,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[{"delta":{"content":null,"reasoning_content":"“"},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071776,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[{"delta":{"content":"9","reasoning_content":""},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071797,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[{"delta":{"content":"。","reasoning_content":null},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071797,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[{"finish_reason":"stop","delta":{"content":""},"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":1739071797,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: {"choices":[],"object":"chat.completion.chunk","usage":{"prompt_tokens":13,"completion_tokens":1436,"total_tokens":1449},"created":1739071797,"system_fingerprint":null,"model":"deepseek-r1","id":"chatcmpl-a351a53b-00a6-9cf6-9c64-ce491bc462a8"}

data: [DONE]

"#;

pub const COMPAT_V32_SSE: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"\",\"reasoning_content\":\"唔\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0,\"logprobs\":null}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"chatcmpl-1b2c\"}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"DeepSeek\",\"reasoning_content\":null},\"finish_reason\":null,\"index\":0,\"logprobs\":null}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"chatcmpl-1b2c\"}\n\n\
data: {\"choices\":[{\"finish_reason\":\"stop\",\"delta\":{\"content\":\"\",\"reasoning_content\":null},\"index\":0,\"logprobs\":null}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"chatcmpl-1b2c\"}\n\n\
data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":140,\"total_tokens\":144,\"completion_tokens_details\":{\"reasoning_tokens\":79},\"prompt_tokens_details\":null},\"model\":\"deepseek-v3.2-exp\",\"id\":\"chatcmpl-1b2c\"}\n\n\
data: [DONE]\n\n";

pub const NATIVE_R1_JSON: &str = r#"{"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":"1 + 1 等于 **2**。…","reasoning_content":"嗯，用户问1加1等于多少。…"}}]},
 "usage":{"total_tokens":313,"output_tokens":302,"input_tokens":11},
 "request_id":"7039d8ff-89e0-9191-b4d3-0d258a7d70e1"}"#;

pub const NATIVE_R1_SSE: &str = "id:1
event:result
:HTTP_STATUS/200
data:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"reasoning_content\":\"嗯\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":14,\"input_tokens\":11,\"output_tokens\":3},\"request_id\":\"e4ad5d0f-8019-9716-adc6-eae1411d3c9a\"}

id:2
event:result
:HTTP_STATUS/200
data:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"reasoning_content\":\"，\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":15,\"input_tokens\":11,\"output_tokens\":4},\"request_id\":\"e4ad5d0f-8019-9716-adc6-eae1411d3c9a\"}

id:394
event:result
:HTTP_STATUS/200
data:{\"output\":{\"choices\":[{\"message\":{\"content\":\"。\",\"reasoning_content\":\"\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":417,\"input_tokens\":11,\"output_tokens\":406},\"request_id\":\"e4ad5d0f-8019-9716-adc6-eae1411d3c9a\"}

id:395
event:result
:HTTP_STATUS/200
data:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"reasoning_content\":\"\",\"role\":\"assistant\"},\"finish_reason\":\"stop\"}]},\"usage\":{\"total_tokens\":417,\"input_tokens\":11,\"output_tokens\":406},\"request_id\":\"e4ad5d0f-8019-9716-adc6-eae1411d3c9a\"}

";
