-- What changed in a product's neighbours between two versions of the neighbours table:
-- which neighbours joined, left or moved. Versions: table_versions lists every commit, e.g.
--   ./spark-submit.sh sql "SELECT * FROM table_versions WHERE table_name = 'neighbours'"
-- params: product_id, before, after (versions)
--   ./spark-submit.sh sql file=conf/queries/neighbour_changes.sql params.product_id=15970 \
--     params.before=3 params.after=4
WITH before AS (
  SELECT neighbour_id, rank, score FROM neighbours@v:before WHERE product_id = :product_id
),
after AS (
  SELECT neighbour_id, rank, score FROM neighbours@v:after WHERE product_id = :product_id
)
SELECT coalesce(a.neighbour_id, b.neighbour_id) AS neighbour_id,
       p.display_name,
       CASE WHEN b.rank IS NULL THEN 'joined'
            WHEN a.rank IS NULL THEN 'left'
            WHEN a.rank <> b.rank THEN 'moved'
            ELSE 'same' END AS change,
       b.rank AS rank_before,
       a.rank AS rank_after,
       round(b.score, 4) AS score_before,
       round(a.score, 4) AS score_after
FROM before b
FULL OUTER JOIN after a ON a.neighbour_id = b.neighbour_id
LEFT JOIN products p ON p.product_id = coalesce(a.neighbour_id, b.neighbour_id)
ORDER BY coalesce(a.rank, 1000000), b.rank
