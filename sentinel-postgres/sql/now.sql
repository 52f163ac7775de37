-- now: the server's clock in µs since the Unix epoch.
SELECT {schema}.micros(clock_timestamp()) AS now_us
