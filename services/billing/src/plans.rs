//! Plans and the price table: configuration, not rows, so that every replica
//! reads the same file and a change is a deploy. Built-in defaults make the
//! service usable without either file.
//!
//! `BILLING_PLANS_FILE` (JSON):
//! ```json
//! {"default_paid_plan": "pro",
//!  "plans": [{"id": "free", "display_name": "Free", "variant_ids": [],
//!             "features": [], "limits": {"inbound_messages": 50, "ai_cost_usd": "1.00"}}]}
//! ```
//! A limit that is absent or null is unlimited. "free" must be present.
//!
//! `BILLING_PRICES_FILE` (JSON), US dollars per million tokens, as strings:
//! `{"openai/gpt-4o-mini": {"input_per_million": "0.15", "output_per_million": "0.60"}}`

use std::{collections::HashMap, str::FromStr};

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::features::Feature;

pub const FREE: &str = "free";

#[derive(Clone, Debug)]
pub struct Plan {
    pub id: String,
    pub display_name: String,
    pub features: Vec<String>,
    /// Lemon Squeezy variants that subscribe to this plan.
    pub variant_ids: Vec<String>,
    limits: HashMap<Feature, Decimal>,
}

impl Plan {
    /// The limit on `feature`; None when unlimited.
    pub fn limit(&self, feature: Feature) -> Option<Decimal> {
        self.limits.get(&feature).copied()
    }
}

#[derive(Clone, Debug)]
pub struct Plans {
    plans: Vec<Plan>,
    /// The plan of a subscription whose variant no plan lists.
    default_paid: String,
}

impl Plans {
    pub fn get(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.id == id)
    }

    pub fn free(&self) -> &Plan {
        self.get(FREE)
            .expect("checked at load: the free plan exists")
    }

    /// The plan `variant_id` subscribes to.
    pub fn for_variant(&self, variant_id: &str) -> &Plan {
        self.plans
            .iter()
            .find(|plan| plan.variant_ids.iter().any(|v| v == variant_id))
            .or_else(|| self.get(&self.default_paid))
            .unwrap_or_else(|| self.free())
    }

    /// The built-in plans, or those of the JSON document `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            default_paid_plan: Option<String>,
            plans: Vec<PlanFile>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PlanFile {
            id: String,
            display_name: Option<String>,
            #[serde(default)]
            variant_ids: Vec<Value>,
            #[serde(default)]
            features: Vec<String>,
            #[serde(default)]
            limits: HashMap<String, Value>,
        }
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut plans = Vec::new();
        for plan in file.plans {
            let mut limits = HashMap::new();
            for (name, value) in plan.limits {
                let feature = Feature::from_config_name(&name).ok_or_else(|| {
                    format!(
                        "plan {:?}: unknown limit {name:?} (known: {})",
                        plan.id,
                        Feature::ALL.map(Feature::config_name).join(", ")
                    )
                })?;
                if value.is_null() {
                    continue;
                }
                let limit = decimal_value(&value)
                    .filter(|limit| !limit.is_sign_negative())
                    .ok_or_else(|| {
                        format!(
                            "plan {:?}: limit {name:?} must be a non-negative number",
                            plan.id
                        )
                    })?;
                limits.insert(feature, limit);
            }
            let variant_ids = plan
                .variant_ids
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(format!(
                        "plan {:?}: variant ids are numbers or strings",
                        plan.id
                    )),
                })
                .collect::<Result<_, _>>()?;
            plans.push(Plan {
                display_name: plan.display_name.unwrap_or_else(|| plan.id.clone()),
                id: plan.id,
                features: plan.features,
                variant_ids,
                limits,
            });
        }
        let plans = Self {
            plans,
            default_paid: file.default_paid_plan.unwrap_or_else(|| "pro".into()),
        };
        if plans.get(FREE).is_none() {
            return Err("there must be a plan with id \"free\"".into());
        }
        Ok(plans)
    }

    pub fn builtin() -> Self {
        Self::parse(BUILTIN_PLANS).expect("the built-in plans parse")
    }
}

/// The defaults `cargo xtask up` and a fresh deploy run with (README lists them).
const BUILTIN_PLANS: &str = r#"{
  "default_paid_plan": "pro",
  "plans": [
    {"id": "free", "display_name": "Free", "features": [],
     "limits": {"inbound_messages": 50, "ai_tokens": 200000, "ai_cost_usd": "1.00",
                "memories": 200, "documents": 5}},
    {"id": "pro", "display_name": "Pro", "features": ["voice_notes", "documents", "web_search"],
     "limits": {"inbound_messages": 2000, "ai_tokens": 5000000, "ai_cost_usd": "30.00",
                "memories": 20000, "documents": 1000}}
  ]
}"#;

fn decimal_value(value: &Value) -> Option<Decimal> {
    match value {
        Value::Number(n) => Decimal::from_str(&n.to_string()).ok(),
        Value::String(s) => Decimal::from_str(s.trim()).ok(),
        _ => None,
    }
}

/// US dollars per million tokens, in and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input_per_million: Decimal,
    pub output_per_million: Decimal,
}

impl Price {
    /// The cost of a call, exact (no rounding until the 10 decimals
    /// stored); None when a configured price is so large that it overflows.
    pub fn cost(&self, input_tokens: i64, output_tokens: i64) -> Option<Decimal> {
        let input = Decimal::from(input_tokens).checked_mul(self.input_per_million)?;
        let output = Decimal::from(output_tokens).checked_mul(self.output_per_million)?;
        input
            .checked_add(output)?
            .checked_div(Decimal::from(1_000_000))
    }
}

/// Prices by "provider/model".
#[derive(Clone, Debug)]
pub struct Prices(HashMap<String, Price>);

impl Prices {
    pub fn get(&self, provider: &str, model: &str) -> Option<Price> {
        self.0.get(&format!("{provider}/{model}")).copied()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PriceFile {
            input_per_million: Value,
            output_per_million: Value,
        }
        let file: HashMap<String, PriceFile> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut prices = HashMap::new();
        for (key, price) in file {
            if !key.contains('/') {
                return Err(format!("{key:?}: keys are \"provider/model\""));
            }
            let parse = |value: &Value, what: &str| {
                decimal_value(value)
                    .filter(|d| !d.is_sign_negative())
                    .ok_or_else(|| format!("{key:?}: {what} must be a non-negative decimal"))
            };
            prices.insert(
                key.clone(),
                Price {
                    input_per_million: parse(&price.input_per_million, "input_per_million")?,
                    output_per_million: parse(&price.output_per_million, "output_per_million")?,
                },
            );
        }
        Ok(Self(prices))
    }

    pub fn builtin() -> Self {
        Self::parse(BUILTIN_PRICES).expect("the built-in prices parse")
    }
}

/// List prices per million tokens; deployments set their own in
/// BILLING_PRICES_FILE.
const BUILTIN_PRICES: &str = r#"{
  "openai/gpt-4o": {"input_per_million": "2.50", "output_per_million": "10.00"},
  "openai/gpt-4o-mini": {"input_per_million": "0.15", "output_per_million": "0.60"},
  "openai/text-embedding-3-small": {"input_per_million": "0.02", "output_per_million": "0"},
  "anthropic/claude-3-5-haiku": {"input_per_million": "0.80", "output_per_million": "4.00"},
  "anthropic/claude-3-5-sonnet": {"input_per_million": "3.00", "output_per_million": "15.00"},
  "local/all-MiniLM-L6-v2": {"input_per_million": "0", "output_per_million": "0"}
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_plans_have_free_and_pro() {
        let plans = Plans::builtin();
        assert_eq!(
            plans.free().limit(Feature::InboundMessages),
            Some(Decimal::from(50))
        );
        assert_eq!(plans.for_variant("unknown").id, "pro");
    }

    #[test]
    fn absent_and_null_limits_are_unlimited() {
        let plans = Plans::parse(
            r#"{"plans": [{"id": "free", "variant_ids": [42],
                "limits": {"inbound_messages": null, "ai_cost_usd": "0.5"}}]}"#,
        )
        .unwrap();
        let free = plans.free();
        assert_eq!(free.limit(Feature::InboundMessages), None);
        assert_eq!(free.limit(Feature::AiTokens), None);
        assert_eq!(free.limit(Feature::AiCostUsd), Some(Decimal::new(5, 1)));
        assert_eq!(free.variant_ids, ["42"]);
        // No "pro" here: an unknown variant falls back to free.
        assert_eq!(plans.for_variant("7").id, "free");
    }

    #[test]
    fn bad_plan_files_are_named() {
        assert!(
            Plans::parse(r#"{"plans": []}"#)
                .unwrap_err()
                .contains("free")
        );
        assert!(
            Plans::parse(r#"{"plans": [{"id": "free", "limits": {"tokens": 1}}]}"#)
                .unwrap_err()
                .contains("unknown limit")
        );
        assert!(
            Plans::parse(r#"{"plans": [{"id": "free", "limits": {"memories": -1}}]}"#)
                .unwrap_err()
                .contains("non-negative")
        );
    }

    #[test]
    fn cost_is_exact_in_decimal() {
        let price = Prices::builtin().get("openai", "gpt-4o-mini").unwrap();
        // 1234 * 0.15 / 1e6 + 567 * 0.60 / 1e6 = 0.0001851 + 0.0003402
        assert_eq!(price.cost(1234, 567).unwrap().to_string(), "0.0005253");
        assert!(Prices::builtin().get("openai", "nope").is_none());
        assert!(
            Prices::parse(r#"{"gpt": {"input_per_million": "1", "output_per_million": "1"}}"#)
                .is_err()
        );
    }
}
