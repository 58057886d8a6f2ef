"""SQL over the catalogue: every table a view by its name, `name@v3` an older version
(views), results as an aligned table or a file (results), errors as one line (errors), and
the JDBC/ODBC endpoint (server)."""
