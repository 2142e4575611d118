"""A site's data quality, at the site: the local report (`report`) and the one statistic it may share (`histogram`)."""
