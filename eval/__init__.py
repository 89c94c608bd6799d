"""The weak-localisation protocol and the datasets it runs on; depends on no other package of this project."""
