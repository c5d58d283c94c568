"""Questions over many configurations: the SLO planner, scenario YAML and vectorised sweeps."""
