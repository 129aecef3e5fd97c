//! MatchProfiles: one per region × latency band, each remembering the region it serves.

use crate::config::{Band, ProfileConfig};
use crate::proto::messages::{
    DoubleRangeFilter, DoubleRangeFilter_Exclude, MatchProfile, Pool, TagPresentFilter,
};

/// A MatchProfile together with the region its matches must be allocated in.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Profile (and pool) name, `latency-<region>-<min>-<max>`.
    pub name: String,
    /// Region whose game servers host this profile's matches.
    pub region: String,
    /// The profile sent to Open Match.
    pub match_profile: MatchProfile,
}

/// Builds every profile: regions in order, and for each region every band in order.
pub fn build_profiles(config: &ProfileConfig) -> Vec<Profile> {
    config
        .regions
        .iter()
        .flat_map(|region| {
            config
                .bands
                .iter()
                .map(move |band| build_profile(region, *band, &config.tag))
        })
        .collect()
}

/// The name of the double argument that holds a ticket's latency to `region`.
pub fn latency_arg(region: &str) -> String {
    format!("latency-{region}")
}

/// The profile of `band` in `region`. Bands are whole milliseconds but clients report fractions,
/// so band `A-B` filters `A ≤ latency < B + 1` (`exclude: MAX`): 24.5 ms falls in `0-24`, not
/// between `0-24` and `25-49`.
fn build_profile(region: &str, band: Band, tag: &str) -> Profile {
    let name = format!("latency-{region}-{}-{}", band.min, band.max);
    let mut range = DoubleRangeFilter::new();
    range.set_double_arg(latency_arg(region));
    range.set_min(f64::from(band.min));
    range.set_max(f64::from(band.max) + 1.0);
    range.set_exclude(DoubleRangeFilter_Exclude::MAX);
    let mut tag_filter = TagPresentFilter::new();
    tag_filter.set_tag(tag.to_string());
    let mut pool = Pool::new();
    pool.set_name(name.clone());
    pool.mut_double_range_filters().push(range);
    pool.mut_tag_present_filters().push(tag_filter);
    let mut match_profile = MatchProfile::new();
    match_profile.set_name(name.clone());
    match_profile.mut_pools().push(pool);
    Profile {
        name,
        region: region.to_string(),
        match_profile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(regions: &[&str], bands: &[(u32, u32)]) -> ProfileConfig {
        ProfileConfig {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            bands: bands.iter().map(|&(min, max)| Band { min, max }).collect(),
            tag: "mode.session".to_string(),
        }
    }

    #[test]
    fn one_profile_per_region_and_band_in_order() {
        let profiles = build_profiles(&config(&["eu", "us"], &[(0, 24), (25, 49)]));
        let names: Vec<_> = profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency-eu-0-24",
                "latency-eu-25-49",
                "latency-us-0-24",
                "latency-us-25-49"
            ]
        );
        let regions: Vec<_> = profiles.iter().map(|p| p.region.as_str()).collect();
        assert_eq!(regions, ["eu", "eu", "us", "us"]);
    }

    #[test]
    fn profile_has_one_pool_with_range_and_tag_filters() {
        let profile = &build_profiles(&config(&["us-east-2"], &[(25, 49)]))[0];
        let mp = &profile.match_profile;
        assert_eq!(mp.get_name(), "latency-us-east-2-25-49");
        assert_eq!(mp.get_pools().len(), 1);
        let pool = &mp.get_pools()[0];
        assert_eq!(pool.get_name(), "latency-us-east-2-25-49");
        let range = &pool.get_double_range_filters()[0];
        assert_eq!(range.get_double_arg(), "latency-us-east-2");
        assert_eq!((range.get_min(), range.get_max()), (25.0, 50.0));
        assert_eq!(range.get_exclude(), DoubleRangeFilter_Exclude::MAX);
        assert_eq!(pool.get_tag_present_filters()[0].get_tag(), "mode.session");
        assert!(pool.get_string_equals_filters().is_empty());
    }
}
