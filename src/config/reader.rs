//! The variable reader: looks values up (old names of the Go director included), records every
//! problem under its variable, and hands back a default for a bad value so that reading goes on
//! and all problems are reported at once.

use super::{Origin, LEGACY_ALIASES};

/// Reads variables through a lookup function and collects problems and warnings.
pub(super) struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Where the settings come from.
    pub(super) origin: Origin,
    /// Every problem found so far, each starting with its variable's name.
    pub(super) problems: Vec<String>,
    /// Things worth a warning at start-up.
    pub(super) warnings: Vec<String>,
}

impl<'a> Reader<'a> {
    /// A reader of `lookup` with the checks of `origin`.
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>, origin: Origin) -> Reader<'a> {
        Reader {
            lookup,
            origin,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The raw value of `name`, falling back to the Go director's old name for it.
    pub(super) fn raw(&mut self, name: &str) -> Option<String> {
        if let Some(value) = (self.lookup)(name) {
            return Some(value);
        }
        let (old, _) = LEGACY_ALIASES.iter().find(|(_, new)| *new == name)?;
        let value = (self.lookup)(old)?;
        self.warnings
            .push(format!("{old} is deprecated: set {name} instead"));
        Some(value)
    }

    /// The value of `name`, or `default` when unset; an empty value is a problem.
    pub(super) fn string(&mut self, name: &str, default: &str) -> String {
        match self.raw(name) {
            None => default.to_string(),
            Some(value) if value.trim().is_empty() => {
                self.problem(name, "is empty");
                default.to_string()
            }
            Some(value) => value.trim().to_string(),
        }
    }

    /// The value of an optional variable; unset and empty both mean "not given".
    pub(super) fn optional(&mut self, name: &str) -> Option<String> {
        self.raw(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value of `name` (`default` when unset) parsed by `parse`; a value `parse` rejects is a
    /// problem, and `T::default()` stands in for it.
    pub(super) fn parsed<T: Default>(
        &mut self,
        name: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let text = self.string(name, default);
        self.check(name, &text, parse)
    }

    /// An optional variable parsed by `parse`: `None` when unset or empty, or when its value is
    /// rejected (a problem).
    pub(super) fn optional_parsed<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.optional(name)?;
        self.check(name, &text, |text| parse(text).map(Some))
    }

    /// `parse(text)`, or the problem recorded under `name` and `T::default()`.
    fn check<T: Default>(
        &mut self,
        name: &str,
        text: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        parse(text).unwrap_or_else(|why| {
            self.problem(name, &format!("{why} (got {text:?})"));
            T::default()
        })
    }

    /// The value of `name` (`default` when unset), which `valid` must accept: else a problem
    /// saying the value is not `what`.
    pub(super) fn checked(
        &mut self,
        name: &str,
        default: &str,
        valid: fn(&str) -> bool,
        what: &str,
    ) -> String {
        let value = self.string(name, default);
        if !valid(&value) {
            self.problem(name, &format!("{value:?} is not {what}"));
        }
        value
    }

    /// Records a problem with variable `name`.
    pub(super) fn problem(&mut self, name: &str, what: &str) {
        self.problems.push(format!("{name}: {what}"));
    }
}
