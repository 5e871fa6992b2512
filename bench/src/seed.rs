//! The bench's users, channels and memberships, written straight into
//! PostgreSQL in bulk (server-side `generate_series` and `UNNEST`), which
//! takes seconds for 100,000 users where the HTTP API would take minutes.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("inserted rows do not match: {0}")]
    Mismatch(String),
}

/// How users are spread over channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "size")]
pub enum Layout {
    /// Everyone in one channel.
    One,
    /// Channels of `k` members; each user in one.
    Small(u32),
    /// One channel with everyone, plus channels of `k` members: each user in two.
    Mix(u32),
    /// Direct messages: channels of exactly two members, each user in `d`
    /// (`d` even). User `i` is paired with user `(i + j) mod n` for `j` in
    /// `1..=d/2` in channel `(j - 1) * n + i`: `n * d / 2` channels.
    Dm(u32),
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Layout, String> {
        let size = |v: &str| match v.parse::<u32>() {
            Ok(k) if k > 0 => Ok(k),
            _ => Err(format!("bad channel size in {s:?}")),
        };
        match s.split_once(':') {
            None if s == "one" => Ok(Layout::One),
            Some(("small", k)) => Ok(Layout::Small(size(k)?)),
            Some(("mix", k)) => Ok(Layout::Mix(size(k)?)),
            Some(("dm", d)) => match size(d)? {
                d if d % 2 == 0 => Ok(Layout::Dm(d)),
                _ => Err(format!(
                    "bad layout {s:?}: channels per user of dm:<d> must be even"
                )),
            },
            _ => Err(format!(
                "unknown layout {s:?}: one, small:<members>, mix:<members>, dm:<channels per user>"
            )),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::One => f.write_str("one"),
            Layout::Small(k) => write!(f, "small:{k}"),
            Layout::Mix(k) => write!(f, "mix:{k}"),
            Layout::Dm(d) => write!(f, "dm:{d}"),
        }
    }
}

impl Layout {
    /// Channels of `n` users.
    pub fn channel_count(self, n: usize) -> usize {
        match self {
            Layout::One => 1,
            Layout::Small(k) => n.div_ceil(k as usize).max(1),
            Layout::Mix(k) => 1 + n.div_ceil(k as usize).max(1),
            Layout::Dm(d) => n * (d as usize / 2),
        }
    }

    /// Whether the layout works for `n` users: `dm:<d>` needs more than
    /// `d` of them, or some user would be paired with itself (`j = n`) or
    /// twice with the same partner (`j = n - j`).
    pub fn check(self, n: usize) -> Result<(), String> {
        match self {
            Layout::Dm(d) if n <= d as usize => Err(format!(
                "layout {self} needs more than {d} sessions, not {n}"
            )),
            _ => Ok(()),
        }
    }

    /// Channel indexes user `i` of `n` is in.
    pub fn channels_of(self, i: usize, n: usize) -> Vec<u32> {
        match self {
            Layout::One => vec![0],
            Layout::Small(k) => vec![(i / k as usize) as u32],
            Layout::Mix(k) => vec![0, 1 + (i / k as usize) as u32],
            // As the first member of its pair with (i + j) mod n, and as
            // the second of (i - j) mod n's pair with it.
            Layout::Dm(d) => (1..=d as usize / 2)
                .flat_map(|j| {
                    let base = (j - 1) * n;
                    [base + i, base + (i + n - j % n) % n]
                })
                .map(|c| c as u32)
                .collect(),
        }
    }

    /// Members of each channel (by user index).
    pub fn members(self, n: usize) -> Vec<Vec<u32>> {
        let mut m = vec![Vec::new(); self.channel_count(n)];
        for i in 0..n {
            for c in self.channels_of(i, n) {
                m[c as usize].push(i as u32);
            }
        }
        m
    }
}

/// What was written: ids by index.
pub struct Population {
    pub username_prefix: String,
    pub user_ids: Vec<i64>,
    pub channel_ids: Vec<i64>,
    /// Members of each channel, by user index.
    pub members: Vec<Vec<u32>>,
}

/// Rows per multi-row statement.
const CHUNK: usize = 50_000;

pub async fn seed(
    pool: &PgPool,
    n: usize,
    layout: Layout,
    run_id: &str,
) -> Result<Population, SeedError> {
    let prefix = format!("b{run_id}_");
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO users (username) SELECT $1 || g FROM generate_series(0, $2 - 1) g \
         RETURNING id, username",
    )
    .bind(&prefix)
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    let mut user_ids = vec![0i64; n];
    for (id, name) in rows {
        let i: usize = name
            .strip_prefix(&prefix)
            .and_then(|s| s.parse().ok())
            .filter(|&i| i < n)
            .ok_or_else(|| SeedError::Mismatch(format!("user {name}")))?;
        user_ids[i] = id;
    }

    let channels = layout.channel_count(n);
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO channels (name, created_by) \
         SELECT 'bench-' || g, $1 FROM generate_series(0, $2 - 1) g RETURNING id, name",
    )
    .bind(user_ids[0])
    .bind(channels as i64)
    .fetch_all(pool)
    .await?;
    let mut channel_ids = vec![0i64; channels];
    for (id, name) in rows {
        let c: usize = name
            .strip_prefix("bench-")
            .and_then(|s| s.parse().ok())
            .filter(|&c| c < channels)
            .ok_or_else(|| SeedError::Mismatch(format!("channel {name}")))?;
        channel_ids[c] = id;
    }

    let members = layout.members(n);
    let pairs: Vec<(i64, i64)> = members
        .iter()
        .enumerate()
        .flat_map(|(c, us)| {
            let cid = channel_ids[c];
            us.iter().map(move |&u| (cid, u as i64))
        })
        .map(|(cid, u)| (cid, user_ids[u as usize]))
        .collect();
    for chunk in pairs.chunks(CHUNK) {
        let (cs, us): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO channel_members (channel_id, user_id) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        )
        .bind(cs)
        .bind(us)
        .execute(pool)
        .await?;
    }
    Ok(Population {
        username_prefix: prefix,
        user_ids,
        channel_ids,
        members,
    })
}

/// Inserts one message directly (the dispatch drive stands in for the
/// backend) and returns its id.
pub async fn insert_message(
    pool: &PgPool,
    channel_id: i64,
    author_id: i64,
    content: &str,
) -> Result<i64, SeedError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO messages (channel_id, author_id, content) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(channel_id)
    .bind(author_id)
    .bind(content)
    .fetch_one(pool)
    .await?)
}

/// Inserts many messages in two round trips (fresh ids, then one
/// `INSERT ... UNNEST`) and returns their ids in the order given. The open-loop
/// dispatch drive writes rows this way ahead of their dispatch time.
pub async fn insert_messages(
    pool: &PgPool,
    rows: &[(i64, i64, String)],
) -> Result<Vec<i64>, SeedError> {
    // Any fresh ids will do: which row gets which does not matter.
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('messages_id_seq') FROM generate_series(1, $1)")
            .bind(rows.len() as i64)
            .fetch_all(pool)
            .await?;
    let channels: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let authors: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let contents: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO messages (id, channel_id, author_id, content) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[])",
    )
    .bind(&ids)
    .bind(channels)
    .bind(authors)
    .bind(contents)
    .execute(pool)
    .await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!("one".parse::<Layout>().unwrap(), Layout::One);
        assert_eq!("small:10".parse::<Layout>().unwrap(), Layout::Small(10));
        assert_eq!("mix:10".parse::<Layout>().unwrap(), Layout::Mix(10));
        assert!("small:0".parse::<Layout>().is_err());
        let m = Layout::Small(10).members(25);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].len(), 5);
        let m = Layout::Mix(10).members(25);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].len(), 25);
        assert_eq!(Layout::Mix(10).channels_of(12, 25), vec![0, 2]);
    }

    /// Every channel has two distinct members, every user is in `d`
    /// channels, and `channels_of` agrees with `members`.
    fn check_dm(n: usize, d: u32) {
        let l = Layout::Dm(d);
        l.check(n).unwrap();
        let m = l.members(n);
        assert_eq!(l.channel_count(n), n * d as usize / 2);
        assert_eq!(m.len(), l.channel_count(n));
        let mut pairs = std::collections::HashSet::new();
        for (c, us) in m.iter().enumerate() {
            assert_eq!(us.len(), 2, "channel {c}: {us:?}");
            assert_ne!(us[0], us[1], "channel {c}");
            assert!(
                pairs.insert((us[0].min(us[1]), us[0].max(us[1]))),
                "pair of {c} twice"
            );
        }
        let mut per_user = vec![0usize; n];
        for us in &m {
            for &u in us {
                per_user[u as usize] += 1;
            }
        }
        for (i, &in_channels) in per_user.iter().enumerate() {
            let cs = l.channels_of(i, n);
            assert_eq!(cs.len(), d as usize, "user {i}");
            assert_eq!(in_channels, d as usize, "user {i}");
            let mut distinct = cs.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), cs.len(), "user {i}: {cs:?}");
            for c in cs {
                assert!(m[c as usize].contains(&(i as u32)), "user {i}, channel {c}");
            }
        }
    }

    #[test]
    fn dm_layout() {
        check_dm(10, 4);
        check_dm(10_000, 4);
        check_dm(5, 4);
        check_dm(3, 2);
        assert_eq!(Layout::Dm(4).channel_count(10_000), 20_000);
        // User i with (i + j) mod n in channel (j - 1) * n + i.
        let m = Layout::Dm(4).members(10);
        assert_eq!(m[3], vec![3, 4]);
        assert_eq!(m[9], vec![0, 9]);
        assert_eq!(m[10 + 9], vec![1, 9]);
        assert_eq!(Layout::Dm(4).channels_of(0, 10), vec![0, 9, 10, 18]);
        // Too few users for dm:4: someone would be paired with itself or
        // with the same partner twice.
        assert!(Layout::Dm(4).check(4).is_err());
        assert!(Layout::Dm(4).check(2).is_err());
        assert!(Layout::Small(10).check(2).is_ok());
    }

    #[test]
    fn dm_parse_and_display() {
        assert_eq!("dm:4".parse::<Layout>().unwrap(), Layout::Dm(4));
        for l in [Layout::Dm(2), Layout::Dm(4), Layout::Dm(10)] {
            assert_eq!(l.to_string().parse::<Layout>().unwrap(), l);
        }
        assert_eq!(Layout::Dm(4).to_string(), "dm:4");
        assert!("dm:3".parse::<Layout>().is_err());
        assert!("dm:1".parse::<Layout>().is_err());
        assert!("dm:0".parse::<Layout>().is_err());
        assert!("dm:".parse::<Layout>().is_err());
        assert!("dm".parse::<Layout>().is_err());
    }
}
