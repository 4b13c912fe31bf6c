"""Shared test helpers: tracking audits (sweepcheck), throwaway servers, process tools, the cluster script."""
