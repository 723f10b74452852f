"""The effects: state store, apparmor_parser, libvirt, installer, files."""
