//! Paging of list answers: what a client asks for (`PageRequest`, `page` from 1 and
//! `page_size` up to `MAX_PAGE_SIZE`) and the `Page` every list route returns. Shared by the
//! read models, the dead letter queue and the audit trail, so it depends on nothing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Highest page number a client may ask for (the OpenAPI `int32` range).
pub const MAX_PAGE: u32 = i32::MAX as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// Page number, from 1.
    #[serde(default = "first_page")]
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    pub page: u32,
    /// Items per page, 1..=100.
    #[serde(default = "default_page_size")]
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub page_size: u32,
}

fn first_page() -> u32 {
    1
}
fn default_page_size() -> u32 {
    20
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: 20,
        }
    }
}

impl PageRequest {
    pub fn is_valid(&self) -> bool {
        (1..=MAX_PAGE).contains(&self.page) && (1..=MAX_PAGE_SIZE).contains(&self.page_size)
    }

    /// The page of `items` (already cut to this page) out of `total_count`.
    pub fn page_of<T>(self, items: Vec<T>, total_count: u64) -> Page<T> {
        Page {
            items,
            page: self.page,
            page_size: self.page_size,
            total_count,
            total_pages: total_count.div_ceil(u64::from(self.page_size.max(1))),
        }
    }

    /// Rows to skip in an SQL `OFFSET` for this page.
    pub fn offset(self) -> i64 {
        (i64::from(self.page.max(1)) - 1) * i64::from(self.page_size)
    }

    /// Cuts one page out of an already ordered list.
    pub fn slice<T>(self, items: Vec<T>) -> Page<T> {
        let total_count = items.len() as u64;
        let skip = (u64::from(self.page.max(1)) - 1) * u64::from(self.page_size);
        let items = items
            .into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(self.page_size as usize)
            .collect();
        self.page_of(items, total_count)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub page_size: u32,
    pub total_count: u64,
    pub total_pages: u64,
}
