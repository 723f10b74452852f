"""The pure generator: domain XML -> model -> ordered rules -> P and F."""
