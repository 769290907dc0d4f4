//! Query parameters of `GET /v1/incidents` into the projections' typed query.

use incidentlog_projections::{ClaimStatus, IncidentQuery, IncidentStatus, Kind, Region, Window};

use crate::error::ApiError;

fn parse<T: std::str::FromStr<Err = String>>(
    name: &str,
    v: Option<&str>,
) -> Result<Option<T>, ApiError> {
    v.map(|s| s.parse::<T>())
        .transpose()
        .map_err(|m| ApiError::bad_field(format!("/{name}"), m))
}

/// Builds the typed query; a bad value is a 400 with a pointer to the parameter.
#[allow(clippy::too_many_arguments)]
pub fn incident_query(
    region: Option<&str>,
    kind: Option<&str>,
    claim_status: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    status: Option<&str>,
    limit: Option<usize>,
    cursor: Option<String>,
) -> Result<IncidentQuery, ApiError> {
    let region = region
        .map(Region::parse)
        .transpose()
        .map_err(|m| ApiError::bad_field("/region", m))?;
    let window = window(from, to)?;
    Ok(IncidentQuery {
        region,
        kind: parse::<Kind>("kind", kind)?,
        claim_status: parse::<ClaimStatus>("claim_status", claim_status)?,
        window,
        status: parse::<IncidentStatus>("status", status)?,
        limit,
        cursor,
    })
}

/// The `from`/`to` window of a query, its error hinting at an undecoded `+`.
pub(crate) fn window(from: Option<&str>, to: Option<&str>) -> Result<Window, ApiError> {
    Window::parse(from, to).map_err(|mut e| {
        let value = if e.pointer == "/to" { to } else { from };
        e.message.push_str(plus_hint(value.unwrap_or("")));
        ApiError::bad_request_at(e)
    })
}

/// A `+` in a query string is a space once decoded: a timestamp sent with `+02:00` arrives
/// with ` 02:00` and fails to parse. The hint for a value ending so (` HH:MM`), not for one
/// that only uses a space between date and time.
pub(crate) fn plus_hint(value: &str) -> &'static str {
    let b = value.as_bytes();
    // A time (it has a `:`) then ` HH:MM`.
    let offset_lost_its_plus = b.len() >= 6 && {
        let (time, tail) = b.split_at(b.len() - 6);
        time.contains(&b':')
            && tail[0] == b' '
            && tail[3] == b':'
            && [1, 2, 4, 5].iter().all(|&i| tail[i].is_ascii_digit())
    };
    if offset_lost_its_plus {
        " (a + in a query string must be sent as %2B: `+02:00` arrives as ` 02:00`)"
    } else {
        ""
    }
}
