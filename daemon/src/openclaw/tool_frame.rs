//! The lean typed form of a `session.tool` event: only the fields an
//! observation's audit entry needs, with the tool output skipped unread.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// A `session.tool` event frame, deserialized without materializing the
/// session row or the tool output (only what the audit entry needs).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ToolFrame {
    #[serde(default)]
    pub payload: ToolPayload,
}

/// `session.tool` payload fields used for observations.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct ToolPayload {
    pub(crate) run_id: Value,
    pub(crate) session_key: Value,
    pub(crate) agent_id: Value,
    pub(crate) data: ToolData,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct ToolData {
    pub(crate) phase: Value,
    pub(crate) name: Value,
    pub(crate) tool_call_id: Value,
    pub(crate) args: Option<Value>,
    pub(crate) is_error: Value,
    pub(crate) result: ToolResult,
}

/// Keeps only `result.details`; anything else (text output, non-objects) is skipped.
#[derive(Debug, Default)]
pub(crate) struct ToolResult {
    pub(crate) details: Value,
}

impl<'de> Deserialize<'de> for ToolResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ToolResult;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a tool result")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ToolResult, A::Error> {
                let mut out = ToolResult::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "details" {
                        out.details = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ToolResult, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ToolResult::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_unit<E>(self) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
            fn visit_none<E>(self) -> Result<ToolResult, E> {
                Ok(ToolResult::default())
            }
        }
        d.deserialize_any(V)
    }
}
