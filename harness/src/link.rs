//! The kinds of child link the experiments make on a parent device, and their modes, with
//! `ip`'s spelling as their text: `ip link add link eth0 name mv1 type macvlan mode bridge`.
//!
//! Typed, so that a mode is one of the kernel's and never a misspelt string in a script.

use std::fmt;
use std::str::FromStr;

/// A macvlan's mode (`ip link ... type macvlan mode MODE`); a macvtap takes the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

/// A macvtap's mode: the macvlan modes (`source.mode=` of virt-install).
pub type MacvtapMode = MacvlanMode;

/// An ipvlan's mode (`ip link ... type ipvlan mode MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvlanMode {
    L2,
    L3,
    L3s,
}

/// A child link of a parent device, with its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Macvlan(MacvlanMode),
    Ipvlan(IpvlanMode),
}

impl MacvlanMode {
    pub const ALL: [MacvlanMode; 5] = [
        MacvlanMode::Private,
        MacvlanMode::Vepa,
        MacvlanMode::Bridge,
        MacvlanMode::Passthru,
        MacvlanMode::Source,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Passthru => "passthru",
            MacvlanMode::Source => "source",
        }
    }
}

impl IpvlanMode {
    pub const ALL: [IpvlanMode; 3] = [IpvlanMode::L2, IpvlanMode::L3, IpvlanMode::L3s];

    pub fn as_str(self) -> &'static str {
        match self {
            IpvlanMode::L2 => "l2",
            IpvlanMode::L3 => "l3",
            IpvlanMode::L3s => "l3s",
        }
    }
}

impl Child {
    /// `ip link add`'s words for it after `type`: `macvlan mode bridge`.
    pub fn ip_type(self) -> String {
        match self {
            Child::Macvlan(mode) => format!("macvlan mode {mode}"),
            Child::Ipvlan(mode) => format!("ipvlan mode {mode}"),
        }
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for IpvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a mode of that kind of link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{word:?} is not a {kind} mode (one of {known})")]
pub struct UnknownMode {
    pub word: String,
    pub kind: &'static str,
    pub known: String,
}

fn parse<T: Copy + fmt::Display>(
    word: &str,
    all: &[T],
    kind: &'static str,
) -> Result<T, UnknownMode> {
    all.iter()
        .copied()
        .find(|m| m.to_string() == word)
        .ok_or_else(|| UnknownMode {
            word: word.to_string(),
            kind,
            known: all
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl FromStr for MacvlanMode {
    type Err = UnknownMode;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        parse(word, &Self::ALL, "macvlan")
    }
}

impl FromStr for IpvlanMode {
    type Err = UnknownMode;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        parse(word, &Self::ALL, "ipvlan")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_and_write_as_ip_spells_them() {
        for mode in MacvlanMode::ALL {
            assert_eq!(mode.to_string().parse::<MacvlanMode>(), Ok(mode));
        }
        for mode in IpvlanMode::ALL {
            assert_eq!(mode.to_string().parse::<IpvlanMode>(), Ok(mode));
        }
        assert_eq!(
            Child::Macvlan(MacvlanMode::Bridge).ip_type(),
            "macvlan mode bridge"
        );
        assert_eq!(Child::Ipvlan(IpvlanMode::L3).ip_type(), "ipvlan mode l3");
        let err = "brige".parse::<MacvlanMode>().expect_err("a typo");
        assert_eq!(
            err.to_string(),
            "\"brige\" is not a macvlan mode (one of private, vepa, bridge, passthru, source)"
        );
    }
}
