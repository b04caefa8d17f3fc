//! Bad links without root or `tc`: what netem does to a cable, decided frame by frame by the
//! switch. A link's [`Impairment`] delays its frames (with jitter), loses some (at random or in
//! Gilbert–Elliott bursts), duplicates some, lets some overtake the delayed ones (reordering)
//! and limits its rate; each frame crossing the cable, either way, meets it once.
//!
//! Like [`super::switch`], this is logic without I/O: [`Link::admit`] says when each copy of a
//! frame leaves, and the port tasks send it then. Randomness comes from a seeded generator, so
//! a run with a seed repeats its losses for the same frames.

use std::time::{Duration, Instant};

/// What a link does to the frames that cross it. The default does nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Added to every frame's trip.
    pub delay: Duration,
    /// Each frame's delay varies uniformly by up to this much either way (never below zero).
    pub jitter: Duration,
    pub loss: Loss,
    /// The share of frames (0 to 1) sent twice.
    pub duplicate: f64,
    /// The share of frames (0 to 1) sent at once, without the delay: they overtake the others.
    pub reorder: f64,
    /// The most bits per second the link carries; frames queue behind each other for it.
    pub rate_bps: Option<u64>,
    /// The seed of the link's randomness; `None` picks one.
    pub seed: Option<u64>,
}

/// How a link loses frames.
/// In words, as `lab set` and the event stream say it: `delay 100ms, loss 1%`, or
/// `a good cable`.
impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.delay.is_zero() {
            parts.push(format!("delay {:?}", self.delay));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("jitter {:?}", self.jitter));
        }
        match self.loss {
            Loss::None => {}
            Loss::Random(p) => parts.push(format!("loss {}%", p * 100.0)),
            Loss::GilbertElliott { p, r, .. } => {
                parts.push(format!("burst loss (p {}%, r {}%)", p * 100.0, r * 100.0));
            }
        }
        if self.duplicate > 0.0 {
            parts.push(format!("duplicate {}%", self.duplicate * 100.0));
        }
        if self.reorder > 0.0 {
            parts.push(format!("reorder {}%", self.reorder * 100.0));
        }
        if let Some(bps) = self.rate_bps {
            parts.push(format!("rate {} kbit/s", bps as f64 / 1000.0));
        }
        if parts.is_empty() {
            write!(f, "a good cable")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Loss {
    #[default]
    None,
    /// Each frame independently, with this probability (0 to 1).
    Random(f64),
    /// Bursts (the Gilbert–Elliott model, as netem's `loss gemodel`): a good and a bad state;
    /// each frame moves good → bad with probability `p` and bad → good with `r`, and is lost
    /// with probability `loss_bad` in the bad state and `loss_good` in the good one.
    GilbertElliott {
        p: f64,
        r: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

/// An impairment that cannot be: what is wrong, for an error that names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is not {what}")]
pub struct BadImpairment {
    pub field: &'static str,
    pub value: String,
    pub what: &'static str,
}

/// A queued frame past this much waiting for the link's rate is dropped (netem's `limit`).
pub const RATE_QUEUE: Duration = Duration::from_millis(200);
/// The longest delay (and jitter) a cable may add: an hour, longer than any lab waits, and far
/// from where adding it to a clock overflows.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The fastest rate limit: 100 Gbit/s, beyond any emulated link.
pub const MAX_RATE_BPS: u64 = 100_000_000_000;

impl Impairment {
    /// Whether it changes anything.
    pub fn is_none(&self) -> bool {
        // The seed alone changes nothing.
        *self
            == Impairment {
                seed: self.seed,
                ..Impairment::default()
            }
    }

    /// Checks every share is a probability and the rate is not zero.
    pub fn validate(&self) -> Result<(), BadImpairment> {
        let share = |field, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(BadImpairment {
                    field,
                    value: format!("{}%", value * 100.0),
                    what: "a share from 0% to 100%",
                })
            }
        };
        share("duplicate", self.duplicate)?;
        share("reorder", self.reorder)?;
        match self.loss {
            Loss::None => {}
            Loss::Random(p) => share("loss", p)?,
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                share("loss.p", p)?;
                share("loss.r", r)?;
                share("loss.good", loss_good)?;
                share("loss.bad", loss_bad)?;
            }
        }
        if let Some(rate) = self.rate_bps.filter(|r| !(1..=MAX_RATE_BPS).contains(r)) {
            return Err(BadImpairment {
                field: "rate",
                value: format!("{rate} bit/s"),
                what: "a rate from 1 bit/s to 100 Gbit/s",
            });
        }
        for (field, value) in [("delay", self.delay), ("jitter", self.jitter)] {
            if value > MAX_DELAY {
                return Err(BadImpairment {
                    field,
                    value: format!("{value:?}"),
                    what: "a delay of at most an hour",
                });
            }
        }
        Ok(())
    }
}

/// One cable's impairment in use: its settings, its randomness and its state.
#[derive(Debug)]
pub struct Link {
    pub impairment: Impairment,
    /// Nothing to do: every frame is [`Fate::Now`].
    plain: bool,
    rng: fastrand::Rng,
    /// Gilbert–Elliott: in the bad state.
    bad: bool,
    /// When the link is free again, for the rate limit.
    free_at: Option<Instant>,
}

/// What a link does with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Sent at once: the link is not impaired.
    Now,
    /// Lost on the cable.
    Lost,
    /// Dropped: too long a queue for the link's rate.
    Overflow,
    /// Sent at each of these instants (two for a duplicate).
    SendAt(Vec<Instant>),
}

impl Link {
    /// A cable with `impairment`. Callers validate it first ([`Impairment::validate`]); one
    /// that was not is held to its bounds here, so that no setting makes the switch panic.
    pub fn new(mut impairment: Impairment) -> Self {
        impairment.delay = impairment.delay.min(MAX_DELAY);
        impairment.jitter = impairment.jitter.min(MAX_DELAY);
        impairment.rate_bps = impairment.rate_bps.map(|r| r.clamp(1, MAX_RATE_BPS));
        let rng = match impairment.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Self {
            plain: impairment.is_none(),
            impairment,
            rng,
            bad: false,
            free_at: None,
        }
    }

    /// The fate of a frame of `len` bytes that reaches the cable at `now`.
    pub fn admit(&mut self, len: usize, now: Instant) -> Fate {
        let imp = self.impairment;
        if self.plain {
            return Fate::Now;
        }
        if self.lost() {
            return Fate::Lost;
        }
        let mut at = now;
        if let Some(bps) = imp.rate_bps {
            let start = self.free_at.filter(|f| *f > now).unwrap_or(now);
            if start.saturating_duration_since(now) > RATE_QUEUE {
                return Fate::Overflow;
            }
            let on_wire = Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
            self.free_at = Some(start + on_wire);
            at = start + on_wire;
        }
        if !self.chance(imp.reorder) {
            at += self.delay();
        }
        let mut times = vec![at];
        if self.chance(imp.duplicate) {
            times.push(at);
        }
        Fate::SendAt(times)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }

    fn lost(&mut self) -> bool {
        match self.impairment.loss {
            Loss::None => false,
            Loss::Random(p) => self.chance(p),
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad { r } else { p };
                if self.chance(flip) {
                    self.bad = !self.bad;
                }
                self.chance(if self.bad { loss_bad } else { loss_good })
            }
        }
    }

    fn delay(&mut self) -> Duration {
        let imp = self.impairment;
        if imp.jitter.is_zero() {
            return imp.delay;
        }
        let swing = imp.jitter.as_secs_f64() * (2.0 * self.rng.f64() - 1.0);
        Duration::from_secs_f64((imp.delay.as_secs_f64() + swing).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(imp: Impairment) -> Link {
        Link::new(Impairment {
            seed: Some(7),
            ..imp
        })
    }

    fn sent(fate: &Fate) -> Vec<Instant> {
        match fate {
            Fate::SendAt(at) => at.clone(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn no_impairment_sends_at_once() {
        let now = Instant::now();
        assert_eq!(link(Impairment::default()).admit(100, now), Fate::Now);
    }

    #[test]
    fn delay_and_jitter_stay_within_what_was_set() {
        let now = Instant::now();
        let mut l = link(Impairment {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            ..Impairment::default()
        });
        let delays: Vec<Duration> = (0..1000)
            .map(|_| sent(&l.admit(100, now))[0] - now)
            .collect();
        assert!(delays.iter().all(|d| (40..=60).contains(&d.as_millis())));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!((48..=52).contains(&mean.as_millis()), "{mean:?}");
    }

    #[test]
    fn random_loss_loses_its_share_and_a_seed_repeats_it() {
        let now = Instant::now();
        let lossy = Impairment {
            loss: Loss::Random(0.2),
            ..Impairment::default()
        };
        let run = |mut l: Link| -> Vec<bool> {
            (0..10_000)
                .map(|_| l.admit(100, now) == Fate::Lost)
                .collect()
        };
        let first = run(link(lossy));
        let lost = first.iter().filter(|l| **l).count();
        assert!((1800..=2200).contains(&lost), "{lost} of 10000");
        assert_eq!(run(link(lossy)), first, "the same seed, the same losses");
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts() {
        let now = Instant::now();
        let mut l = link(Impairment {
            loss: Loss::GilbertElliott {
                p: 0.01,
                r: 0.2,
                loss_good: 0.0,
                loss_bad: 1.0,
            },
            ..Impairment::default()
        });
        let lost: Vec<bool> = (0..100_000)
            .map(|_| l.admit(100, now) == Fate::Lost)
            .collect();
        let total = lost.iter().filter(|l| **l).count();
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
        // Stationary share of the bad state: p / (p + r) ≈ 4.8%; bursts last 1/r = 5 frames.
        assert!((3500..=6000).contains(&total), "{total}");
        let mean_burst = total as f64 / bursts as f64;
        assert!((4.0..=6.0).contains(&mean_burst), "{mean_burst}");
    }

    #[test]
    fn a_rate_limit_spaces_frames_and_drops_past_its_queue() {
        let now = Instant::now();
        let mut l = link(Impairment {
            rate_bps: Some(8_000_000), // 1 byte per µs
            ..Impairment::default()
        });
        let first = sent(&l.admit(1000, now))[0];
        let second = sent(&l.admit(1000, now))[0];
        assert_eq!(first - now, Duration::from_micros(1000));
        assert_eq!(second - first, Duration::from_micros(1000));
        let fates: Vec<Fate> = (0..300).map(|_| l.admit(1000, now)).collect();
        assert!(
            fates.contains(&Fate::Overflow),
            "a queue past 200 ms overflows"
        );
    }

    #[test]
    fn duplicates_and_reordering_take_their_share() {
        let now = Instant::now();
        let mut l = link(Impairment {
            delay: Duration::from_millis(10),
            duplicate: 0.5,
            reorder: 0.25,
            ..Impairment::default()
        });
        let fates: Vec<Vec<Instant>> = (0..10_000).map(|_| sent(&l.admit(100, now))).collect();
        let twice = fates.iter().filter(|t| t.len() == 2).count();
        let early = fates.iter().filter(|t| t[0] == now).count();
        assert!((4700..=5300).contains(&twice), "{twice}");
        assert!((2300..=2700).contains(&early), "{early}");
    }

    #[test]
    fn a_share_past_100_percent_or_a_zero_rate_is_refused_naming_the_field() {
        let over = Impairment {
            loss: Loss::Random(1.5),
            ..Impairment::default()
        };
        let e = over.validate().expect_err("refused");
        assert_eq!((e.field, e.value.as_str()), ("loss", "150%"));
        let zero = Impairment {
            rate_bps: Some(0),
            ..Impairment::default()
        };
        assert_eq!(zero.validate().expect_err("refused").field, "rate");
        assert!(Impairment::default().validate().is_ok());
        assert!(Impairment {
            seed: Some(3),
            ..Impairment::default()
        }
        .is_none());
    }
}
