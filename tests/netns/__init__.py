"""Root-only tests against real kernel objects in throwaway network namespaces."""
