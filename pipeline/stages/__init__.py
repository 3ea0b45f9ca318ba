"""The stages in data order, each a plain function over paths and Arrow tables: extract, train,
templates, assign, report. A stage imports doors (io), the method and the executor, never
another stage."""
