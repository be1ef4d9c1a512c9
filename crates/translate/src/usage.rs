//! Usage in OpenAI's shape, normalised: what every translator emits and
//! the gateway reads.

use serde_json::{Value, json};

use crate::Usage;

/// `usage` as OpenAI writes it, with the split counts modelfleet prices:
/// cache reads (`prompt_tokens_details.cached_tokens`), cache writes
/// (`prompt_tokens_details.cache_write_tokens`, only when non-zero) and
/// reasoning (`completion_tokens_details.reasoning_tokens`). Totals include
/// the splits.
#[must_use]
pub fn usage_json(usage: &Usage) -> Value {
    let mut prompt = json!({"cached_tokens": usage.cached_tokens});
    if usage.cache_write_tokens > 0 {
        prompt["cache_write_tokens"] = json!(usage.cache_write_tokens);
    }
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens.saturating_add(usage.output_tokens),
        "prompt_tokens_details": prompt,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

/// A `usage` object in OpenAI's shape ([`usage_json`]'s), if it has
/// `prompt_tokens` and `completion_tokens` as whole numbers; any other
/// shape is `None` (usage unknown: the call is charged its hold).
#[must_use]
pub fn usage_of(usage: &Value) -> Option<Usage> {
    let usage = Some(usage).filter(|u| u.is_object())?;
    let n = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64);
    Some(Usage {
        input_tokens: n("/prompt_tokens")?,
        output_tokens: n("/completion_tokens")?,
        cached_tokens: n("/prompt_tokens_details/cached_tokens").unwrap_or(0),
        cache_write_tokens: n("/prompt_tokens_details/cache_write_tokens").unwrap_or(0),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_through_openai_shape() {
        let usage = Usage {
            input_tokens: 1_200,
            output_tokens: 300,
            cached_tokens: 800,
            cache_write_tokens: 100,
            reasoning_tokens: 120,
        };
        assert_eq!(usage_of(&usage_json(&usage)), Some(usage));
        let plain = Usage::new(5, 7);
        let value = usage_json(&plain);
        assert!(value["prompt_tokens_details"].get("cache_write_tokens").is_none());
        assert_eq!(usage_of(&value), Some(plain));
    }

    #[test]
    fn another_shape_is_no_usage() {
        assert_eq!(usage_of(&json!({"input_tokens": 5, "output_tokens": 7})), None);
        assert_eq!(usage_of(&json!({"prompt_tokens": "5", "completion_tokens": 7})), None);
        assert_eq!(usage_of(&json!(null)), None);
    }
}
