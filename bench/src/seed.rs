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
            _ => Err(format!(
                "unknown layout {s:?}: one, small:<members>, mix:<members>"
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
        }
    }

    /// Channel indexes user `i` is in.
    pub fn channels_of(self, i: usize) -> Vec<u32> {
        match self {
            Layout::One => vec![0],
            Layout::Small(k) => vec![(i / k as usize) as u32],
            Layout::Mix(k) => vec![0, 1 + (i / k as usize) as u32],
        }
    }

    /// Members of each channel (by user index).
    pub fn members(self, n: usize) -> Vec<Vec<u32>> {
        let mut m = vec![Vec::new(); self.channel_count(n)];
        for i in 0..n {
            for c in self.channels_of(i) {
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
        assert_eq!(Layout::Mix(10).channels_of(12), vec![0, 2]);
    }
}
