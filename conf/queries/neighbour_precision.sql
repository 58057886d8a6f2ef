-- The neighbours' precision per masterCategory: the share of each product's top k that has
-- the product's masterCategory (and, stricter, its articleType), averaged over the class.
--   ./spark-submit.sh sql file=conf/queries/neighbour_precision.sql
SELECT q.master_category AS class,
       count(DISTINCT n.product_id) AS products,
       round(avg(CASE WHEN c.master_category = q.master_category THEN 1 ELSE 0 END), 4)
         AS same_category,
       round(avg(CASE WHEN c.article_type = q.article_type THEN 1 ELSE 0 END), 4)
         AS same_article_type
FROM neighbours n
JOIN products q ON q.product_id = n.product_id
JOIN products c ON c.product_id = n.neighbour_id
GROUP BY q.master_category
ORDER BY products DESC, class
