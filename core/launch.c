/* Placeholder: filled in by the RPC core work. */
typedef int ember_placeholder_launch;
