//! The `classify` transform: sets each event's routes (the stores it goes to) from its type,
//! per `transforms/classification.toml` or the file in `rules`. Types the rules do not list go
//! to the dead letters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::event::{Batch, EventType, Route, Routes};
use crate::sinks::dead_letter::{DeadLetter, DeadLetters, Reason};

/// The built-in rules, compiled into the binary.
pub const BUILTIN_RULES: &str = include_str!("../../transforms/classification.toml");

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// A classification file of the same shape as `transforms/classification.toml`
    /// (default: the built-in one).
    pub rules: Option<PathBuf>,
}

impl ClassifyConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        match Classification::load(self) {
            Ok(_) => Vec::new(),
            Err(e) => vec![("rules".into(), e.to_string())],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("cannot read the classification file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Event type → routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    routes: [Option<Routes>; EventType::ALL.len()],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    stores: Vec<String>,
}

static BUILTIN: LazyLock<Classification> = LazyLock::new(|| {
    Classification::parse(BUILTIN_RULES, "transforms/classification.toml")
        .expect("the built-in classification is valid (tested)")
});

impl Classification {
    pub fn builtin() -> &'static Classification {
        &BUILTIN
    }

    pub fn load(config: &ClassifyConfig) -> Result<Classification, ClassifyError> {
        match &config.rules {
            None => Ok(Classification::builtin().clone()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ClassifyError::Read {
                    path: path.clone(),
                    source,
                })?;
                Classification::parse(&text, &path.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, path: &str) -> Result<Classification, ClassifyError> {
        let invalid = |message: String| ClassifyError::Invalid {
            path: path.to_string(),
            message,
        };
        let rules: BTreeMap<String, Rule> =
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut routes = [None; EventType::ALL.len()];
        for (type_name, rule) in rules {
            let event_type = EventType::parse(&type_name).ok_or_else(|| {
                invalid(format!(
                    "unknown event type [{type_name}]; known types: {}",
                    EventType::ALL.map(|t| t.as_str()).join(", ")
                ))
            })?;
            let mut set = Routes::NONE;
            for store in &rule.stores {
                let route = Route::parse(store).ok_or_else(|| {
                    invalid(format!(
                        "[{type_name}] names an unknown store {store:?}; known stores: {}",
                        Route::ALL.map(|r| r.as_str()).join(", ")
                    ))
                })?;
                set = set.with(route);
            }
            routes[event_type.index()] = Some(set);
        }
        Ok(Classification { routes })
    }

    /// The routes of a type, or `None` when the rules do not list it.
    pub fn routes(&self, event_type: EventType) -> Option<Routes> {
        self.routes[event_type.index()]
    }
}

/// The transform.
pub struct Classify {
    pub name: String,
    pub rules: Classification,
}

impl Classify {
    pub async fn apply(&self, mut batch: Batch, dead_letters: &DeadLetters) -> Batch {
        let mut rejected = Vec::new();
        batch
            .events
            .retain_mut(|event| match self.rules.routes(event.event_type()) {
                Some(routes) => {
                    event.routes = routes;
                    true
                }
                None => {
                    rejected.push(DeadLetter::from_event(
                        Reason::Unclassified,
                        format!(
                            "transforms.{}: the classification rules have no entry for {}",
                            self.name,
                            event.event_type()
                        ),
                        &self.name,
                        event,
                    ));
                    false
                }
            });
        for letter in rejected {
            dead_letters.send(letter.with_ack(&batch.ack)).await;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_rules_follow_the_spec_table() {
        let c = Classification::builtin();
        let has = |t: EventType, r: Route| c.routes(t).unwrap().contains(r);
        for t in EventType::ALL {
            assert!(has(t, Route::Events), "{t} is stored in events");
            assert!(has(t, Route::Analytics), "{t} goes to Parquet");
        }
        assert!(has(EventType::EvaluationCompleted, Route::Evaluations));
        assert!(has(EventType::EvaluationStarted, Route::EvalCache));
        assert!(has(EventType::ContainerCreated, Route::SecurityAudit));
        assert!(has(EventType::ResourceViolation, Route::SecurityEvents));
        assert!(has(EventType::ExecutorHealth, Route::ExecutorHealth));
        assert!(has(EventType::QueueMetrics, Route::QueueMetrics));
        assert!(!has(EventType::QueueMetrics, Route::Evaluations));
    }

    #[test]
    fn bad_rules_name_the_problem() {
        let e = Classification::parse("[NOPE]\nstores=[\"events\"]", "x.toml").unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
        let e = Classification::parse("[QUEUE_METRICS]\nstores=[\"kafka\"]", "x.toml").unwrap_err();
        assert!(e.to_string().contains("kafka"), "{e}");
    }

    #[test]
    fn an_unlisted_type_is_a_dead_letter() {
        let rules = Classification::parse("[QUEUE_METRICS]\nstores=[\"events\"]", "x").unwrap();
        let classify = Classify {
            name: "c".into(),
            rules,
        };
        let e1 = crate::decode::decode_line(
            br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":0}"#,
            chrono::Utc::now(),
        )
        .unwrap();
        let e2 = crate::decode::decode_line(
            br#"{"type":"EVALUATION_FAILED","eval_id":"x","error":"e","traceback":"t"}"#,
            chrono::Utc::now(),
        )
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(10);
        let dead = DeadLetters::for_test(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out =
            rt.block_on(classify.apply(Batch::new(vec![e1, e2], crate::event::Ack::none()), &dead));
        assert_eq!(out.events.len(), 1);
        assert!(out.events[0].routes.contains(Route::Events));
        let letter = rx.try_recv().unwrap();
        assert_eq!(letter.reason, Reason::Unclassified);
    }
}
