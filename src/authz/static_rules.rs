//! Static authorization rules from the config file: a user or group that may
//! use some verbs on some subresources, decided locally with no apiserver
//! round trip. Rules only allow; anything they do not allow goes on to the
//! SubjectAccessReview (or is denied when there is none).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::attributes::{Subresource, Verb};
use crate::authn::Identity;

/// A rule as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API verbs (`get`, `create`, …) or `*`.
    pub verbs: Vec<String>,
    /// Subresources of `nodes` (`proxy`, `log`, `metrics`, …) or `*`.
    pub subresources: Vec<String>,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("a rule needs exactly one of `user` or `group`")]
    Subject,
    #[error("unknown verb {0:?} (expected one of get, create, update, patch, delete, or *)")]
    Verb(String),
    #[error(
        "unknown subresource {0:?} (expected one of stats, metrics, log, checkpoint, pods, healthz, configz, statusz, proxy, or *)"
    )]
    Subresource(String),
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRule {
    subject: Subject,
    verbs: Vec<Verb>,
    subresources: Vec<Subresource>,
}

impl TryFrom<&StaticRuleSpec> for StaticRule {
    type Error = RuleError;

    fn try_from(spec: &StaticRuleSpec) -> Result<Self, RuleError> {
        let subject = match (&spec.user, &spec.group) {
            (Some(user), None) if !user.is_empty() => Subject::User(user.clone()),
            (None, Some(group)) if !group.is_empty() => Subject::Group(group.clone()),
            _ => return Err(RuleError::Subject),
        };
        let verbs = expand(&spec.verbs, &Verb::ALL, |v| {
            Verb::ALL.into_iter().find(|verb| verb.as_str() == v)
        })
        .map_err(|name| RuleError::Verb(name.unwrap_or_default()))?;
        let subresources = expand(&spec.subresources, &Subresource::ALL, Subresource::parse)
            .map_err(|name| RuleError::Subresource(name.unwrap_or_default()))?;
        if verbs.is_empty() {
            return Err(RuleError::Empty("verbs"));
        }
        if subresources.is_empty() {
            return Err(RuleError::Empty("subresources"));
        }
        Ok(StaticRule {
            subject,
            verbs,
            subresources,
        })
    }
}

/// Expands `*` and parses names; `Err(Some(name))` names the bad entry.
fn expand<T: Copy>(
    names: &[String],
    all: &[T],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, Option<String>> {
    if names.iter().any(|n| n == "*") {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|n| parse(n).ok_or_else(|| Some(n.clone())))
        .collect()
}

impl StaticRule {
    fn allows(&self, identity: &Identity, verb: Verb, subresource: Subresource) -> bool {
        let subject_matches = match &self.subject {
            Subject::User(user) => identity.user == *user,
            Subject::Group(group) => identity.groups.iter().any(|g| g == group),
        };
        subject_matches && self.verbs.contains(&verb) && self.subresources.contains(&subresource)
    }
}

/// All static rules, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticRules(Vec<StaticRule>);

impl StaticRules {
    /// Validates every rule; the error carries the index of the bad one.
    pub fn from_specs(specs: &[StaticRuleSpec]) -> Result<Self, (usize, RuleError)> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| StaticRule::try_from(spec).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map(StaticRules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, identity: &Identity, verb: Verb, subresource: Subresource) -> bool {
        self.0
            .iter()
            .any(|rule| rule.allows(identity, verb, subresource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        user: Option<&str>,
        group: Option<&str>,
        verbs: &[&str],
        subs: &[&str],
    ) -> StaticRuleSpec {
        StaticRuleSpec {
            user: user.map(Into::into),
            group: group.map(Into::into),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            subresources: subs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn who(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn users_groups_verbs_and_subresources_all_have_to_match() {
        let rules = StaticRules::from_specs(&[
            spec(Some("apiserver"), None, &["*"], &["*"]),
            spec(None, Some("monitoring"), &["get"], &["metrics", "stats"]),
        ])
        .unwrap();
        let apiserver = who("apiserver", &[]);
        let prometheus = who("prometheus", &["monitoring"]);
        let stranger = who("monitoring", &["other"]);

        assert!(rules.allows(&apiserver, Verb::Create, Subresource::Proxy));
        assert!(rules.allows(&prometheus, Verb::Get, Subresource::Metrics));
        assert!(rules.allows(&prometheus, Verb::Get, Subresource::Stats));
        assert!(!rules.allows(&prometheus, Verb::Create, Subresource::Metrics));
        assert!(!rules.allows(&prometheus, Verb::Get, Subresource::Proxy));
        assert!(
            !rules.allows(&stranger, Verb::Get, Subresource::Metrics),
            "a user name is not a group"
        );
    }

    #[test]
    fn bad_rules_say_which_and_why() {
        let cases = [
            (spec(None, None, &["get"], &["proxy"]), RuleError::Subject),
            (
                spec(Some("a"), Some("b"), &["get"], &["proxy"]),
                RuleError::Subject,
            ),
            (
                spec(Some(""), None, &["get"], &["proxy"]),
                RuleError::Subject,
            ),
            (
                spec(Some("a"), None, &["list"], &["proxy"]),
                RuleError::Verb("list".into()),
            ),
            (
                spec(Some("a"), None, &["get"], &["exec"]),
                RuleError::Subresource("exec".into()),
            ),
            (
                spec(Some("a"), None, &[], &["proxy"]),
                RuleError::Empty("verbs"),
            ),
            (
                spec(Some("a"), None, &["get"], &[]),
                RuleError::Empty("subresources"),
            ),
        ];
        for (bad, want) in cases {
            let ok = spec(Some("x"), None, &["get"], &["proxy"]);
            assert_eq!(StaticRules::from_specs(&[ok, bad]), Err((1, want)));
        }
    }
}
