//! API key scopes: what a key may do, optionally narrowed to one collection
//! (`delete:products`).

use std::fmt;
use std::str::FromStr;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    Read,
    Write,
    Delete,
    ReadDeleted,
    Restore,
    Purge,
    Erase,
    Hold,
    Audit,
    Events,
    Admin,
}

impl Permission {
    pub const ALL: [Self; 11] = [
        Self::Read,
        Self::Write,
        Self::Delete,
        Self::ReadDeleted,
        Self::Restore,
        Self::Purge,
        Self::Erase,
        Self::Hold,
        Self::Audit,
        Self::Events,
        Self::Admin,
    ];

    /// The name used in keys and in `missing_scope`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::ReadDeleted => "read_deleted",
            Self::Restore => "restore",
            Self::Purge => "purge",
            Self::Erase => "erase",
            Self::Hold => "hold",
            Self::Audit => "audit",
            Self::Events => "events",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// A granted scope: a permission, for every collection or for one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub permission: Permission,
    pub collection: Option<String>,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.collection {
            Some(c) => write!(f, "{}:{c}", self.permission),
            None => write!(f, "{}", self.permission),
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (perm, collection) = match s.split_once(':') {
            Some((p, c)) if !c.is_empty() => (p, Some(c.to_string())),
            Some(_) => return Err(format!("scope {s:?} names no collection after ':'")),
            None => (s, None),
        };
        let permission: Permission = perm.parse()?;
        if permission == Permission::Admin && collection.is_some() {
            return Err("admin cannot be narrowed to a collection".into());
        }
        Ok(Self { permission, collection })
    }
}

/// Parses a comma-separated list (`read,delete:products`), dropping duplicates.
///
/// # Errors
/// Names the first unknown scope; an empty list is an error too.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, String> {
    parse_scope_items(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
}

/// Parses scopes given one per item.
///
/// # Errors
/// Names the first unknown scope; an empty list is an error too.
pub fn parse_scope_items<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, String> {
    let mut scopes: Vec<Scope> = Vec::new();
    for item in items {
        let scope: Scope = item.parse()?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err("a key needs at least one scope".into());
    }
    scopes.sort();
    Ok(scopes)
}

/// Whether `scopes` grant `permission` on `collection` (`None`: an action that is not
/// about one collection, which only an un-narrowed scope grants).
///
/// `admin` grants everything; `read_deleted` includes `read`, since a key that may see
/// deleted records may see active ones too.
#[must_use]
pub fn allows(scopes: &[Scope], permission: Permission, collection: Option<&str>) -> bool {
    scopes.iter().any(|s| {
        let perm_ok = s.permission == permission
            || s.permission == Permission::Admin
            || (permission == Permission::Read && s.permission == Permission::ReadDeleted);
        let coll_ok = match (&s.collection, collection) {
            (None, _) => true,
            (Some(mine), Some(wanted)) => mine == wanted,
            (Some(_), None) => false,
        };
        perm_ok && coll_ok
    })
}

/// The first of `wanted` that `held` does not grant, if any: a key may hand on only what it
/// holds itself, so creating keys can never widen anyone's access.
///
/// A wanted scope narrowed to a collection is granted by a held scope for that collection
/// or for all; an un-narrowed one only by an un-narrowed held scope (or `admin`).
#[must_use]
pub fn first_not_granted<'a>(held: &[Scope], wanted: &'a [Scope]) -> Option<&'a Scope> {
    wanted.iter().find(|w| !allows(held, w.permission, w.collection.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowed_scopes() {
        let scopes = parse_scopes("read, delete:products").unwrap();
        assert!(allows(&scopes, Permission::Read, Some("orders")));
        assert!(allows(&scopes, Permission::Delete, Some("products")));
        assert!(!allows(&scopes, Permission::Delete, Some("orders")));
        assert!(!allows(&scopes, Permission::Delete, None));
        assert!(!allows(&scopes, Permission::Write, Some("products")));
    }

    #[test]
    fn admin_and_read_deleted() {
        let admin = parse_scopes("admin").unwrap();
        assert!(Permission::ALL.iter().all(|p| allows(&admin, *p, Some("x"))));
        let rd = parse_scopes("read_deleted").unwrap();
        assert!(allows(&rd, Permission::Read, Some("x")));
        assert!(!allows(&rd, Permission::Write, Some("x")));
    }

    #[test]
    fn only_held_scopes_are_handed_on() {
        let admin = parse_scopes("admin").unwrap();
        let wanted = parse_scopes("admin,read,delete:products").unwrap();
        assert_eq!(first_not_granted(&admin, &wanted), None);
        let narrow = parse_scopes("read_deleted,delete:products").unwrap();
        assert_eq!(first_not_granted(&narrow, &parse_scopes("read,delete:products").unwrap()), None);
        let all_deletes = parse_scopes("delete").unwrap();
        assert_eq!(first_not_granted(&narrow, &all_deletes), Some(&all_deletes[0]));
        let other = parse_scopes("delete:orders").unwrap();
        assert_eq!(first_not_granted(&narrow, &other), Some(&other[0]));
        let admin_wanted = parse_scopes("admin").unwrap();
        assert_eq!(first_not_granted(&narrow, &admin_wanted), Some(&admin_wanted[0]));
        let rd = parse_scopes("read_deleted").unwrap();
        assert_eq!(first_not_granted(&parse_scopes("read").unwrap(), &rd), Some(&rd[0]));
    }

    #[test]
    fn bad_scopes() {
        assert!(parse_scopes("").is_err());
        assert!(parse_scopes("reed").is_err());
        assert!(parse_scopes("admin:products").is_err());
        assert!(parse_scopes("read:").is_err());
    }
}
