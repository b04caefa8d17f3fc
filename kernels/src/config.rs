//! The kernel configuration the lab needs ([`FRAGMENT`], `kernels/lab.config`), and how a
//! kernel's `.config` measures against it.

/// What a guest kernel needs, as a config fragment to merge into a tree's `.config`.
pub const FRAGMENT: &str = include_str!("../lab.config");

/// The options [`FRAGMENT`] sets, each with the value it asks for (`y` or `m`).
pub fn options() -> Vec<(&'static str, &'static str)> {
    FRAGMENT
        .lines()
        .filter_map(|line| line.strip_prefix("CONFIG_").map(|_| line))
        .filter_map(|line| line.split_once('='))
        .collect()
}

/// The options of [`FRAGMENT`] that `config` (a `.config`'s text) does not set at all: built
/// in or as a module both do, since the lab loads modules at boot.
pub fn missing_from(config: &str) -> Vec<&'static str> {
    options()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            !config.lines().any(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .is_some_and(|value| value == "y" || value == "m")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_asks_for_each_option_once_as_y_or_m() {
        let options = options();
        assert!(options.len() > 30, "{options:?}");
        assert!(options.iter().all(|(_, v)| *v == "y" || *v == "m"));
        let mut names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), options.len(), "an option twice");
        assert!(options.contains(&("CONFIG_MACVLAN", "m")));
    }

    #[test]
    fn a_config_missing_an_option_or_saying_no_is_named() {
        let all: String = options()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect();
        assert!(missing_from(&all).is_empty());
        let without = all
            .replace("CONFIG_MACVLAN=m\n", "# CONFIG_MACVLAN is not set\n")
            .replace("CONFIG_IPVLAN=m\n", "CONFIG_IPVLAN_L3S=y\n");
        assert_eq!(missing_from(&without), ["CONFIG_MACVLAN", "CONFIG_IPVLAN"]);
    }
}
