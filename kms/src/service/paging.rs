//! Paging of every `List*` call (AIP-158): `page_size` (0: the default; above
//! [`MAX_PAGE_SIZE`], that maximum), an opaque `page_token` from the previous response, and
//! `next_page_token` (empty on the last page). A token carries the listing's name,
//! a digest of the request's filters, and the sort key of the last item given, so
//! a page never repeats or skips an item that existed when the first page was
//! read, and a token is refused with other filters or another listing.

use sha2::{Digest, Sha256};

use crate::ops::{OpsError, invalid};

/// Items per page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page.
pub const MAX_PAGE_SIZE: usize = 1000;
const TOKEN_VERSION: &str = "p1";

/// A validated page request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    listing: &'static str,
    filters: String,
    /// Items on this page, at most.
    pub size: usize,
    /// The sort key of the last item of the previous page (none: the first page).
    pub after: Option<String>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// For the next request; empty on the last page.
    pub next_page_token: String,
}

fn digest(listing: &str, filters: &str) -> String {
    let mut h = Sha256::new();
    h.update(listing.as_bytes());
    h.update([0]);
    h.update(filters.as_bytes());
    hex::encode(h.finalize().get(..8).unwrap_or_default())
}

impl PageRequest {
    /// Checks `page_size` and `page_token` for `listing` with these `filters` (every
    /// filter field of the request, in a fixed order).
    pub fn new(
        listing: &'static str,
        filters: &[&str],
        page_size: u32,
        page_token: &str,
    ) -> Result<PageRequest, OpsError> {
        let size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let filters = filters.join("\u{1f}");
        let after = if page_token.is_empty() {
            None
        } else {
            Some(Self::cursor(listing, &filters, page_token)?)
        };
        Ok(PageRequest {
            listing,
            filters,
            size,
            after,
        })
    }

    fn cursor(listing: &str, filters: &str, token: &str) -> Result<String, OpsError> {
        let bad = || {
            invalid(
                "page_token is not a token this listing gave with these filters: \
                 start again without page_token, or repeat the filters of the first request",
            )
        };
        if token.len() > 1024 {
            return Err(bad());
        }
        let text = hex::decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let mut parts = text.splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(TOKEN_VERSION), Some(d), Some(cursor)) if d == digest(listing, filters) => {
                Ok(cursor.to_string())
            }
            _ => Err(bad()),
        }
    }

    /// The token that continues after the item whose sort key is `cursor`.
    pub fn token_after(&self, cursor: &str) -> String {
        hex::encode(format!(
            "{TOKEN_VERSION}|{}|{cursor}",
            digest(self.listing, &self.filters)
        ))
    }

    /// A page of `items` in ascending order of `key` (which must be unique):
    /// those after the cursor, at most `size` of them.
    pub fn page<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        items.sort_by_key(|i| key(i));
        let mut rest: Vec<T> = match &self.after {
            Some(after) => items.into_iter().filter(|i| key(i) > *after).collect(),
            None => items,
        };
        self.cut(&mut rest, key)
    }

    /// Keeps the first `size` of `items` (already ordered and after the cursor,
    /// with at most one more than `size` to show whether a page follows) and makes
    /// the next token from the last one kept.
    pub fn cut<T>(&self, items: &mut Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        let more = items.len() > self.size;
        items.truncate(self.size);
        let next_page_token = match items.last() {
            Some(last) if more => self.token_after(&key(last)),
            _ => String::new(),
        };
        Page {
            items: std::mem::take(items),
            next_page_token,
        }
    }
}

/// A sort key for numbers that orders as text: zero-padded.
pub fn numeric_key(n: i64) -> String {
    // Offset so negative values order before positive ones.
    format!("{:020}", i128::from(n) - i128::from(i64::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_pages(listing: &'static str, size: u32, items: &[u32]) -> Vec<Vec<u32>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let req = PageRequest::new(listing, &["f"], size, &token).unwrap();
            let page = req.page(items.to_vec(), |i| numeric_key(i64::from(*i)));
            pages.push(page.items);
            if page.next_page_token.is_empty() {
                return pages;
            }
            token = page.next_page_token;
        }
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let items: Vec<u32> = (0..25).rev().collect();
        let pages = all_pages("l", 10, &items);
        assert_eq!(pages.len(), 3);
        assert_eq!(pages.concat(), (0..25).collect::<Vec<_>>());
        // Exactly a multiple of the size: no empty trailing page.
        assert_eq!(all_pages("l", 5, &(0..10).collect::<Vec<_>>()).len(), 2);
        assert_eq!(all_pages("l", 5, &[]), vec![Vec::<u32>::new()]);
    }

    #[test]
    fn a_token_only_serves_its_listing_and_filters() {
        let req = PageRequest::new("keys", &["a"], 1, "").unwrap();
        let token = req.token_after("x");
        assert!(PageRequest::new("keys", &["a"], 1, &token).is_ok());
        assert!(PageRequest::new("keys", &["b"], 1, &token).is_err());
        assert!(PageRequest::new("entities", &["a"], 1, &token).is_err());
        assert!(PageRequest::new("keys", &["a"], 1, "zz").is_err());
        assert!(PageRequest::new("keys", &["a"], 1, &"ab".repeat(600)).is_err());
    }

    #[test]
    fn page_size_is_bounded() {
        assert_eq!(
            PageRequest::new("l", &[], 0, "").unwrap().size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(PageRequest::new("l", &[], 1000, "").unwrap().size, 1000);
        assert_eq!(PageRequest::new("l", &[], 1001, "").unwrap().size, 1000);
    }

    #[test]
    fn numeric_keys_order_as_numbers() {
        let mut v = [5i64, -3, 100, 0, i64::MIN, i64::MAX];
        let mut keys: Vec<String> = v.iter().map(|n| numeric_key(*n)).collect();
        v.sort();
        keys.sort();
        assert_eq!(keys, v.iter().map(|n| numeric_key(*n)).collect::<Vec<_>>());
    }
}
